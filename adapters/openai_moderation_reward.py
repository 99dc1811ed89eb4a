"""`OpenAIModerationReward`: the OpenAI moderation API (`POST /v1/moderations`) as a veto scorer.

Each partial answer is sent as one item of a list `input` (the API takes an array and answers one
result per item, in order), `model` defaulting to `omni-moderation-latest`. A result carries a score
in [0, 1] per category and OpenAI's own `flagged` decision; the scorer reports:

- `safety` = 1 - the highest category score (the steering reward too), with a default floor of 0.5:
  a text some category scores over 0.5 is vetoed (OpenAI publishes no thresholds of its own);
- `not_flagged` (1 or 0), a second veto at 0.5: whatever the scores, a text OpenAI flags is vetoed;
- with `per_category`, each category's score as `unsafe:<category>` (the omni model's 13).

The moderation model judges the answer's text alone, not the conversation. Failures follow
`stars_guard.adapters._http` (retries on 429/5xx, the request's deadline) and end in `RewardError`;
a result without scores, or without a category `per_category` needs, fails closed too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from stars_guard.adapters._http import HTTPClient, RetryPolicy, Timeouts
from stars_guard.capabilities import RewardCapabilities
from stars_guard.errors import RewardError
from stars_guard.messages import ChatMessage
from stars_guard.protocols import RewardScores
from stars_guard.specs import server_root

DEFAULT_MODEL = "omni-moderation-latest"
DEFAULT_FLOOR = 0.5
MAX_INPUTS = 32  # items per request
OMNI_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


class OpenAIModerationReward:
    """Scores partial answers with an OpenAI-compatible `/v1/moderations` (see the module docstring)."""

    def __init__(
        self,
        base_url: str = "https://api.openai.com",
        *,
        model: str = DEFAULT_MODEL,
        per_category: bool = False,
        safety_floor: float = DEFAULT_FLOOR,
        max_batch_size: int = MAX_INPUTS,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.base_url = server_root(base_url)
        self.client = HTTPClient(
            self.base_url,
            error_type=RewardError,
            service="moderation service (/v1/moderations)",
            timeouts=timeouts,
            retry=retry,
            api_key=api_key,
        )
        self.model = model
        self.per_category = per_category
        self.safety_floor = safety_floor
        self.max_batch_size = max(1, min(max_batch_size, MAX_INPUTS))
        self.retries = 0

    @property
    def name(self) -> str:
        return f"openai-moderation:{self.model}"

    @property
    def category_components(self) -> tuple[str, ...]:
        return tuple(f"unsafe:{category}" for category in OMNI_CATEGORIES) if self.per_category else ()

    @property
    def capabilities(self) -> RewardCapabilities:
        """`safety` at its floor, OpenAI's `flagged` as a veto of its own; batched over requests."""
        return RewardCapabilities(
            components=("safety", "not_flagged", *self.category_components),
            safety_floor=self.safety_floor,
            vetoes=(("not_flagged", 0.5),),
            batched_scoring=True,
        )

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        return list(self.score_components(conversation, responses).reward)

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        return self._scores(list(responses))

    def score_many(self, items: Sequence[tuple[Sequence[ChatMessage], Sequence[str]]]) -> list[RewardScores]:
        """All items' responses in shared requests (the API judges each text on its own)."""
        texts = [response for _, responses in items for response in responses]
        every = self._scores(texts)
        results, at = [], 0
        for _, responses in items:
            part = slice(at, at + len(responses))
            at += len(responses)
            results.append(
                RewardScores(
                    list(every.reward[part]), {name: list(values[part]) for name, values in every.components.items()}
                )
            )
        return results

    def close(self) -> None:
        self.client.close()

    def _scores(self, texts: list[str]) -> RewardScores:
        components: dict[str, list[float]] = {name: [] for name in ("safety", "not_flagged", *self.category_components)}
        for start in range(0, len(texts), self.max_batch_size):
            chunk = texts[start : start + self.max_batch_size]
            result = self.client.post("/v1/moderations", {"model": self.model, "input": chunk})
            self.retries += result.retries
            for item in self._results(result.data, len(chunk)):
                scores = item.get("category_scores")
                if not isinstance(scores, dict) or not scores:
                    raise RewardError(f"moderation at {self.base_url} returned no category_scores: {str(item)[:200]}")
                values = {str(name): _probability(name, value, self.base_url) for name, value in scores.items()}
                components["safety"].append(1.0 - max(values.values()))
                flagged = item.get("flagged")
                if not isinstance(flagged, bool):  # a missing decision is not "not flagged"
                    raise RewardError(f"moderation at {self.base_url} returned no flagged decision: {str(item)[:200]}")
                components["not_flagged"].append(0.0 if flagged else 1.0)
                for category in OMNI_CATEGORIES if self.per_category else ():
                    if category not in values:
                        raise RewardError(
                            f"moderation model {self.model!r} at {self.base_url} reports no {category!r} score "
                            "(per_category needs the omni-moderation categories)"
                        )
                    components[f"unsafe:{category}"].append(values[category])
        return RewardScores(list(components["safety"]), components)

    def _results(self, data: Any, expected: int) -> list[dict[str, Any]]:
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list) or len(results) != expected or not all(isinstance(r, dict) for r in results):
            raise RewardError(f"moderation at {self.base_url} returned {str(data)[:200]} for {expected} inputs")
        return results


def _probability(name: object, value: object, base_url: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RewardError(f"moderation at {base_url} returned a score {value!r} for {name!r}, not a number")
    return min(1.0, max(0.0, float(value)))
