"""Wrappers that time every backend drafting call and reward call (`PrometheusExporter.instrument`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from stars_guard.messages import ChatMessage
from stars_guard.protocols import (
    Backend,
    Candidate,
    Generation,
    GenerationWrapper,
    RewardModel,
    RewardScores,
    RewardWrapper,
)


class TimedBackend:
    """A `Backend` that reports how long each drafting call takes (prompt prefill not included)."""

    def __init__(self, inner: Backend, observe: Callable[[float], None]) -> None:
        self.inner = inner
        self._observe = observe

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def open(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> Generation:
        generation = self.inner.open(
            messages, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        return _TimedGeneration(generation, self._observe)

    def __getattr__(self, name: str) -> Any:  # tokenizer, context_window, ... of the wrapped backend
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class _TimedGeneration(GenerationWrapper):
    def __init__(self, inner: Generation, observe: Callable[[float], None]) -> None:
        super().__init__(inner)
        self._observe = observe

    def draft(self, num_candidates: int, max_tokens: int, **options: Any) -> list[Candidate]:
        """Timed draft; `options` (e.g. `entropy_cut`) pass through to backends that take them."""
        started = time.perf_counter()
        try:
            return super().draft(num_candidates, max_tokens, **options)
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
