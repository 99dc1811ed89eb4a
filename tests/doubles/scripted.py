"""Test doubles for unit-testing the engine's pure logic (never used in integration tests).

`ScriptedBackend` returns pre-written candidate segments round by round; one character is one
token, so token counts are easy to reason about. `ScriptedReward` scores by a function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stars_guard.messages import ChatMessage, Conversation, as_conversation
from stars_guard.protocols import Candidate

EOS = "<eos>"


def make_candidate(text: str, max_tokens: int = 10**9) -> Candidate:
    """`text` ending in EOS marks a candidate that hit end-of-sequence (EOS is one more token)."""
    body = text.removesuffix(EOS)[:max_tokens]
    hit_eos = text.endswith(EOS) and len(body) < max_tokens
    ids = tuple(ord(char) for char in body) + ((0,) if hit_eos else ())
    return Candidate(body, ids, "eos" if hit_eos else "length", tuple(range(1, len(body) + 1)))


@dataclass
class ScriptedGeneration:
    rounds: list[list[str]]
    prompt_tokens: int = 5
    llm_calls: int = 0
    llm_forward_tokens: int = 5
    committed: list[str] = field(default_factory=list)
    retained: Candidate | None = None
    closed: bool = False
    latest: list[Candidate] = field(default_factory=list)
    drafted: list[str] = field(default_factory=list)
    on_draft: Callable[[], None] | None = None

    def draft(self, num_candidates: int, max_tokens: int) -> list[Candidate]:
        if not self.rounds:
            raise AssertionError("the script ran out of rounds")
        if self.on_draft is not None:
            self.on_draft()
        self.llm_calls += 1
        scripted = self.rounds.pop(0)
        # A round may script fewer candidates than requested; the engine judges what it gets.
        self.latest = [make_candidate(text, max_tokens) for text in scripted[:num_candidates]]
        self.drafted.extend(candidate.text for candidate in self.latest)
        self.llm_forward_tokens += sum(candidate.num_tokens for candidate in self.latest)
        return self.latest

    def retain(self, candidate: Candidate) -> None:
        assert any(candidate is drafted for drafted in self.latest)
        self.retained = candidate

    def commit(self, candidate: Candidate) -> None:
        assert any(candidate is drafted for drafted in self.latest) or candidate is self.retained
        assert candidate.finish_reason != "eos", "the engine must not continue past EOS"
        self.committed.append(candidate.text)
        self.retained = None

    def close(self) -> None:
        self.closed = True


class ScriptedBackend:
    model_name = "scripted"

    def __init__(self, rounds: Sequence[Sequence[str]], on_draft: Callable[[], None] | None = None) -> None:
        self.generation = ScriptedGeneration([list(r) for r in rounds], on_draft=on_draft)
        self.opened_with: dict[str, object] = {}

    def open(self, messages: Sequence[ChatMessage], **params: object) -> ScriptedGeneration:
        self.opened_with = {"messages": list(messages), **params}
        return self.generation


class ScriptedReward:
    """Reward = `fn(full_partial_response)`; records every call."""

    name = "scripted"

    def __init__(self, fn: Callable[[str], float]) -> None:
        self.fn = fn
        self.calls: list[tuple[Conversation, list[str]]] = []

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        self.calls.append((as_conversation(conversation), list(responses)))
        return [self.fn(text) for text in responses]


def reward_table(table: dict[str, float], default: float = 0.0) -> Callable[[str], float]:
    """Reward by the last segment: the longest key that the response ends with."""

    def fn(text: str) -> float:
        matches = [key for key in table if text.endswith(key)]
        return table[max(matches, key=len)] if matches else default

    return fn
