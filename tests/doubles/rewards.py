"""Scripted reward models: a test decides exactly which candidates pass.

`ScriptedReward` scores by a function of the partial answer and records every call;
`KeywordReward` is the usual function (0 with a keyword, 1 without); `FailingReward` goes down
after a number of calls, as a reward service would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from stars_guard.messages import ChatMessage, Conversation, as_conversation


class ScriptedReward:
    """Reward = `fn(full_partial_response)`; records every call."""

    def __init__(self, fn: Callable[[str], float], name: str = "scripted") -> None:
        self.fn = fn
        self.name = name
        self.calls: list[tuple[Conversation, list[str]]] = []

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        self.calls.append((as_conversation(conversation), list(responses)))
        return [self.fn(text) for text in responses]


class KeywordReward(ScriptedReward):
    """0.0 for a response that contains `keyword`, else 1.0: with a fixed threshold of 0.5 (`CONFIG`),
    exactly the candidates with the keyword fail."""

    def __init__(self, keyword: str = "BAD") -> None:
        super().__init__(lambda text: 0.0 if keyword in text else 1.0, name="keyword")
        self.keyword = keyword


def marker_reward(marker: str = "FORBIDDEN") -> KeywordReward:
    """`KeywordReward(marker)`, with the chat service tests' marker."""
    return KeywordReward(marker)


class FailingReward:
    """Scores 1.0 until call number `fail_at` (1-based), which raises, as a reward service going down."""

    name = "failing"

    def __init__(self, fail_at: int = 1) -> None:
        self.fail_at = fail_at
        self.calls = 0

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise ConnectionError("reward service at http://10.0.0.7:8081 refused the connection")
        return [1.0] * len(responses)


def reward_table(table: dict[str, float], default: float = 0.0) -> Callable[[str], float]:
    """Reward by the last segment: the longest key that the response ends with."""

    def fn(text: str) -> float:
        matches = [key for key in table if text.endswith(key)]
        return table[max(matches, key=len)] if matches else default

    return fn
