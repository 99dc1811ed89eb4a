"""Backends and reward scorers behind the engine's protocols, one file each.

Imported lazily: `from stars_guard.adapters import TransformersBackend` loads torch only then.

Backends with token-level control (token ids, KV cache):
    TransformersBackend   adapters/transformers_backend.py
Reward scorers:
    GuardReward           adapters/guard_reward.py   (offline default: safety + relevance)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TransformersBackend": "stars_guard.adapters.transformers_backend",
    "TransformersGeneration": "stars_guard.adapters.transformers_backend",
    "load_causal_lm": "stars_guard.adapters.transformers_backend",
    "GuardReward": "stars_guard.adapters.guard_reward",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stars_guard.adapters' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
