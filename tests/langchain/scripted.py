"""Test doubles for the LangChain layer's pure logic (never used by the integration tests).

`ScriptedBackend` replays pre-written candidate segments round by round, a fresh generation per
request; one character is one token. `KeywordReward` scores 0 when a response contains "BAD",
else 1; with `CONFIG` (absolute threshold 0.5) every BAD candidate is rejected and every other
one accepted, so each test knows exactly which decisions the engine makes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stars_guard.config import STARSConfig
from stars_guard.messages import ChatMessage
from stars_guard.protocols import Candidate
from tests.doubles.scripted import EOS, make_candidate

CONFIG = STARSConfig(
    threshold_mode="absolute",
    reward_threshold=0.5,
    alpha=1.0,
    segment_size=8,
    candidates_per_round=2,
    max_attempts=4,
    max_new_tokens=64,
    # The scripts below spell out each round: K candidates per round, judged in index order.
    segment_budget="flat",
    round_selection="first",
)
# Two segments: the first accepted on attempt 2, the second on attempt 3 (after two rejections).
ROUNDS = [["BAD-0001", "Hello, "], ["BAD-0002", "BAD-0003"], [f"world!{EOS}"]]


@dataclass
class ScriptedGeneration:
    rounds: list[list[str]]
    delay: float = 0.0
    prompt_tokens: int = 7
    llm_calls: int = 0
    llm_forward_tokens: int = 7
    requested: list[int] = field(default_factory=list)
    latest: list[Candidate] = field(default_factory=list)
    closed: bool = False

    def draft(self, num_candidates: int, max_tokens: int) -> list[Candidate]:
        if self.delay:
            time.sleep(self.delay)
        self.requested.append(num_candidates)
        self.llm_calls += 1
        scripted = self.rounds.pop(0) if self.rounds else [f"padding{EOS}"]
        self.latest = [make_candidate(text, max_tokens) for text in scripted[:num_candidates]]
        self.llm_forward_tokens += sum(candidate.num_tokens for candidate in self.latest)
        return self.latest

    def retain(self, candidate: Candidate) -> None:
        pass

    def commit(self, candidate: Candidate) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class ScriptedBackend:
    """`script` is a list of rounds, or a function of the request's seed returning one."""

    model_name = "scripted-lm"

    def __init__(
        self, script: Sequence[Sequence[str]] | Callable[[int | None], Sequence[Sequence[str]]], delay: float = 0.0
    ) -> None:
        self.script = script
        self.delay = delay
        self.opened: list[dict[str, Any]] = []
        self.generations: list[ScriptedGeneration] = []

    def open(self, messages: Sequence[ChatMessage], **params: Any) -> ScriptedGeneration:
        self.opened.append({"messages": list(messages), **params})
        rounds = self.script(params.get("seed")) if callable(self.script) else self.script
        generation = ScriptedGeneration([list(r) for r in rounds], delay=self.delay)
        self.generations.append(generation)
        return generation


class KeywordReward:
    name = "keyword"

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        return [0.0 if "BAD" in text else 1.0 for text in responses]
