"""Wrappers that time every backend drafting call and reward call (`PrometheusExporter.instrument`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

from stars_guard.messages import ChatMessage
from stars_guard.protocols import (
    Backend,
    BackendWrapper,
    Candidate,
    Generation,
    GenerationWrapper,
    OpenRequest,
    RewardModel,
    RewardScores,
    RewardWrapper,
)


class TimedBackend(BackendWrapper):
    """A `Backend` that reports how long each drafting call takes (prompt prefill not included)."""

    def __init__(self, inner: Backend, observe: Callable[[float], None]) -> None:
        super().__init__(inner)
        self._observe = observe

    def open(self, request: OpenRequest) -> Generation:
        return _TimedGeneration(self.inner.open(request), self._observe)


class _TimedGeneration(GenerationWrapper):
    def __init__(self, inner: Generation, observe: Callable[[float], None]) -> None:
        super().__init__(inner)
        self._observe = observe

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        """Timed draft; an entropy cut passes through to generations that take one."""
        started = time.perf_counter()
        try:
            return super().draft(num_candidates, max_tokens, entropy_cut)
        finally:
            _safely(self._observe, time.perf_counter() - started)


class TimedReward(RewardWrapper):
    """A `RewardModel` that reports how long each scoring call takes."""

    def __init__(self, inner: RewardModel, observe: Callable[[float], None]) -> None:
        super().__init__(inner)
        self._observe = observe

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        started = time.perf_counter()
        try:
            return super().score_components(conversation, responses)
        finally:
            _safely(self._observe, time.perf_counter() - started)


def _safely(observe: Callable[[float], None], seconds: float) -> None:
    with contextlib.suppress(Exception):  # a metrics failure must not fail generation
        observe(seconds)
