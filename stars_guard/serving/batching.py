"""`BatchingReward`: the candidates of requests that finished a round together, scored in one call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from stars_guard.errors import ConfigError
from stars_guard.messages import ChatMessage, Conversation, as_conversation
from stars_guard.protocols import BatchRewardModel, RewardModel, RewardScores, RewardWrapper, score_conversation


@dataclass
class _Scoring:
    conversation: Conversation
    responses: list[str]
    future: Future[RewardScores]


class BatchingReward(RewardWrapper):
    """Scores the candidates of requests that finished a round together in one reward call.

    Lockstep rounds end for all their requests at once, so their `score` calls arrive within
    milliseconds. The first caller waits `window_s`, then scores everything that arrived in one
    call, `inner.score_many([(conversation, responses), ...])` where the scorer has it (one encoder pass
    for every request's texts), else one `score` call per request, all on one thread: `runner`'s
    if given (`LockstepBackend.run_on_scheduler`, so drafting and scoring never compete for the
    cores), else the first caller's. A failure reaches every request of the batch, and each
    applies its own failure policy.
    """

    def __init__(
        self,
        inner: RewardModel,
        *,
        window_s: float = 0.005,
        runner: Callable[[Callable[[], Any]], Any] | None = None,
    ) -> None:
        if window_s < 0:
            raise ConfigError(f"window_s must be >= 0 seconds, got {window_s}")
        super().__init__(inner)
        self.runner = runner  # e.g. LockstepBackend.run_on_scheduler: where the scoring runs
        self.window_s = window_s
        self.batches = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._pending: list[_Scoring] = []
        self._collecting = False

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        scoring = _Scoring(as_conversation(conversation), list(responses), Future())
        with self._lock:
            self._pending.append(scoring)
            leads = not self._collecting
            self._collecting = True
        if leads:
            time.sleep(self.window_s)
            with self._lock:
                batch, self._pending, self._collecting = self._pending, [], False
            if self.runner is None:
                self._score_batch(batch)
            else:
                try:
                    self.runner(lambda: self._score_batch(batch))
                except BaseException as exc:  # the runner itself failed (e.g. closed): nobody may hang
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
        return scoring.future.result()

    def _score_batch(self, batch: list[_Scoring]) -> None:
        self.batches += 1
        self.requests += len(batch)
        try:
            if isinstance(self.inner, BatchRewardModel):
                results = list(self.inner.score_many([(item.conversation, item.responses) for item in batch]))
            else:
                results = [score_conversation(self.inner, item.conversation, item.responses) for item in batch]
            if len(results) != len(batch):
                raise RuntimeError(f"scorer returned {len(results)} results for {len(batch)} requests")
        except BaseException as exc:
            for item in batch:
                item.future.set_exception(exc)
            return
        for item, scores in zip(batch, results, strict=True):
            item.future.set_result(scores)
