"""Micro-batching: work items that arrive together, processed in one call. One mechanism, two users.

`MicroBatcher` collects items submitted from any thread until `window_s` after the first of them
(or until `max_size` is reached), then hands them to `process` in one call on its own thread, or
on `runner`'s (e.g. the lockstep scheduler thread). Items that arrive while a batch is being
processed form the next one. Each item gets a `concurrent.futures.Future`; a failure reaches
every item of its batch.

- `BatchingReward` (lockstep serving): engine worker threads block on the future; the candidates
  of every request that finished a round are scored in one `score_many` call.
- `stars_guard.serving.reward_server.RewardBatcher` (`stars-guard serve-reward`): request
  handlers await the future on the event loop (`bridge.result_of`); one `score` call per
  distinct prompt of a batch.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from stars_guard.errors import ConfigError
from stars_guard.messages import ChatMessage, Conversation, as_conversation
from stars_guard.protocols import RewardModel, RewardScores, RewardWrapper, score_batch

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

Runner = Callable[[Callable[[], Any]], Any]  # runs a call on some thread and returns its result


@dataclass(eq=False)
class _Entry(Generic[ItemT, ResultT]):
    item: ItemT
    size: int
    since: float  # time.monotonic() at submit
    future: Future[ResultT] = field(default_factory=Future)
    # The submitter's context (e.g. its request deadline, `stars_guard.deadline`), so a batch runs as
    # its first submitter would have run it alone.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


def _settle(future: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve `future` unless it is already done (e.g. cancelled by an awaiting event loop)."""
    if future.done():
        return
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class MicroBatcher(Generic[ItemT, ResultT]):
    """Collects items and processes them in batches on one thread (module docstring). Thread-safe.

    `process` takes the items of a batch and returns one result per item, in order. `size` weighs
    an item against `max_size` (default: 1 per item); a batch always takes at least one item.
    """

    def __init__(
        self,
        process: Callable[[list[ItemT]], Sequence[ResultT]],
        *,
        window_s: float = 0.005,
        max_size: int | None = None,
        size: Callable[[ItemT], int] | None = None,
        runner: Runner | None = None,
        name: str = "stars-batch",
    ) -> None:
        if window_s < 0:
            raise ConfigError(f"window_s must be >= 0 seconds, got {window_s}")
        if max_size is not None and max_size < 1:
            raise ConfigError(f"max_size must be >= 1, got {max_size}")
        self.process = process
        self.window_s = window_s
        self.max_size = max_size
        self.size = size
        self.runner = runner
        self.name = name
        self.batches = 0  # batches processed
        self.items = 0  # items in them
        self._cond = threading.Condition()
        self._pending: deque[_Entry[ItemT, ResultT]] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, item: ItemT) -> Future[ResultT]:
        """Queue `item` for the next batch; never blocks. `RuntimeError` once closed."""
        entry: _Entry[ItemT, ResultT] = _Entry(item, self.size(item) if self.size else 1, time.monotonic())
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self.name} batcher is closed")
            self._pending.append(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return entry.future

    def close(self) -> None:
        """Stop taking items; the ones still waiting fail with `RuntimeError` (a batch in progress finishes)."""
        with self._cond:
            self._closed = True
            waiting, self._pending = list(self._pending), deque()
            self._cond.notify_all()
        for entry in waiting:
            _settle(entry.future, error=RuntimeError(f"the {self.name} batcher was closed"))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:  # closed and nothing left
                    return
                while not self._closed and not self._full():
                    left = self._pending[0].since + self.window_s - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = self._take()
            if batch:
                self._dispatch(batch)

    def _full(self) -> bool:
        return self.max_size is not None and sum(entry.size for entry in self._pending) >= self.max_size

    def _take(self) -> list[_Entry[ItemT, ResultT]]:
        """The next batch: pending items in order, up to `max_size` (at least one); cancelled ones dropped."""
        batch: list[_Entry[ItemT, ResultT]] = []
        total = 0
        while self._pending:
            entry = self._pending[0]
            if batch and self.max_size is not None and total + entry.size > self.max_size:
                break
            self._pending.popleft()
            if not entry.future.cancelled():
                batch.append(entry)
                total += entry.size
        return batch

    def _dispatch(self, batch: list[_Entry[ItemT, ResultT]]) -> None:
        def run() -> None:
            batch[0].context.run(self._process, batch)

        try:
            if self.runner is None:
                run()
            else:
                self.runner(run)
        except BaseException as exc:  # the runner itself failed (e.g. closed): nobody may hang
            for entry in batch:
                _settle(entry.future, error=exc)

    def _process(self, batch: list[_Entry[ItemT, ResultT]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = list(self.process([entry.item for entry in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for a batch of {len(batch)}")
        except BaseException as exc:
            for entry in batch:
                _settle(entry.future, error=exc)
            return
        for entry, result in zip(batch, results, strict=True):
            _settle(entry.future, result=result)


class BatchingReward(RewardWrapper):
    """Scores the candidates of requests that finished a round together in one reward call.

    Lockstep rounds end for all their requests at once, so their `score` calls arrive within
    milliseconds. A `MicroBatcher` collects them for `window_s`, then scores everything that
    arrived in one call, `inner.score_many([(conversation, responses), ...])` where the scorer
    has it (one encoder pass for every request's texts), else one `score` call per request, all
    on one thread: `runner`'s if given (`LockstepBackend.run_on_scheduler`, so drafting and
    scoring never compete for the cores), else the batcher's. A failure reaches every request of
    the batch, and each applies its own failure policy.
    """

    def __init__(self, inner: RewardModel, *, window_s: float = 0.005, runner: Runner | None = None) -> None:
        super().__init__(inner)
        self._batcher: MicroBatcher[tuple[Conversation, list[str]], RewardScores] = MicroBatcher(
            self._score_batch, window_s=window_s, runner=runner, name="stars-reward-batch"
        )

    @property
    def window_s(self) -> float:
        return self._batcher.window_s

    @property
    def runner(self) -> Runner | None:
        """Where the scoring runs (e.g. `LockstepBackend.run_on_scheduler`); None: the batcher's thread."""
        return self._batcher.runner

    @property
    def batches(self) -> int:
        return self._batcher.batches

    @property
    def requests(self) -> int:
        return self._batcher.items

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        return self._batcher.submit((as_conversation(conversation), list(responses))).result()

    def _score_batch(self, items: list[tuple[Conversation, list[str]]]) -> list[RewardScores]:
        return score_batch(self.inner, items)
