"""stars-guard: decoding-time alignment with STARS (segment-level rejection sampling guided by a reward model).

Light to import: torch and HTTP clients load only when a backend or reward model is built.
"""

from __future__ import annotations

from stars_guard.config import STARSConfig
from stars_guard.engine import STARSEngine
from stars_guard.errors import (
    BackendError,
    ConfigError,
    ContextWindowExceededError,
    InvalidMessagesError,
    ModelNotFoundError,
    RewardError,
    SpecError,
    StarsGuardError,
)
from stars_guard.events import CandidateJudged, Finished, STARSResult, TextEmitted
from stars_guard.messages import ChatMessage
from stars_guard.protocols import Backend, Candidate, Generation, RewardModel
from stars_guard.stats import STATS_KEYS, STARSStats

__version__ = "0.1.0"

_LAZY = {
    # LangChain integration: imported on first use so the core stays light without langchain-core.
    "STARSChatModel": "stars_guard.langchain.chat_model",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stars_guard' has no attribute {name!r}")


__all__ = [
    "STATS_KEYS",
    "Backend",
    "BackendError",
    "Candidate",
    "CandidateJudged",
    "ChatMessage",
    "ConfigError",
    "ContextWindowExceededError",
    "Finished",
    "Generation",
    "InvalidMessagesError",
    "ModelNotFoundError",
    "RewardError",
    "RewardModel",
    "STARSChatModel",
    "STARSConfig",
    "STARSEngine",
    "STARSResult",
    "STARSStats",
    "SpecError",
    "StarsGuardError",
    "TextEmitted",
]
