"""What the engine says while it writes an answer: decisions, accepted text, the result.

Every caller (CLI, LangChain model, server) consumes the same events in order. Only `TextEmitted`
carries answer text; `CandidateJudged.text` is a candidate's text for observers, never part of the
answer unless it was accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stars_guard.stats import STARSStats

FinishReason = Literal["stop", "length", "refusal", "time_budget"]


@dataclass(frozen=True, slots=True)
class CandidateJudged:
    """One accept/reject decision. `text` is the candidate's text: never part of the answer unless accepted.

    `vetoed`: its safety score was under the floor, so it can never be emitted (not even as fallback);
    `safety` is that score (None where the veto is off; NaN where fail-open left it unscored).
    `part` is "tool_call" when the candidate wrote part of a tool call (judged per `guard_tool_calls`).
    """

    segment_index: int
    attempt: int
    reward: float
    threshold: float
    accepted: bool
    fallback: bool
    tokens: int
    text: str
    vetoed: bool = False
    safety: float | None = None
    part: Literal["text", "tool_call"] = "text"


@dataclass(frozen=True, slots=True)
class TextEmitted:
    """Answer text that passed the reward check, safe to show."""

    segment_index: int
    text: str


@dataclass(frozen=True, slots=True)
class STARSResult:
    """The finished answer."""

    text: str
    stats: STARSStats
    finish_reason: FinishReason
    model_name: str


@dataclass(frozen=True, slots=True)
class Finished:
    """Last event of a stream."""

    result: STARSResult


Event = CandidateJudged | TextEmitted | Finished
