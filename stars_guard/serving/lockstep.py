"""Lockstep batching: the drafting rounds of concurrent requests run as one batched call.

STARS drafts fixed-size segments, so requests served at the same time reach their drafting
rounds at nearly the same moments (the STARS paper's v2 makes this argument). `LockstepBackend`
wraps a backend that can draft for several of its generations at once (its capabilities declare
`batch_drafting`) and
sends every model call of every request through one scheduler thread:

- a draft waits until every open generation has asked for its next round, then all waiting
  drafts run as one round: one forward per token for all rows. A request that is slow to come
  back (still scoring, or stalled) holds the others up for at most a few times the usual gap
  between a round and the next draft (a moving average), and never more than `max_wait_s`;
- prefill (`open`) runs between rounds, all waiting prompts in one batched forward where the
  backend declares `batch_opening`, so new requests join the next round together;
- `retain`, `commit` and `close` are bookkeeping and run on the caller's thread.

Requests never share sampling state: each generation samples with its own parameters and seed.
Pure threading here; the batched arithmetic lives in the backend (e.g. `TransformersBackend`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, cast

from stars_guard.capabilities import backend_capabilities
from stars_guard.errors import ConfigError
from stars_guard.protocols import (
    Backend,
    BackendWrapper,
    BatchDrafter,
    BatchOpener,
    Candidate,
    DraftRequest,
    Generation,
    GenerationWrapper,
    OpenRequest,
)

_GAP_SMOOTHING = 0.2  # weight of the newest gap in the moving average
_GAP_MULTIPLE = 3.0  # how many usual gaps a round waits for a late request
_MIN_PATIENCE_S = 0.005
_GAP_PRIOR_S = 0.1  # before any gap is seen: scoring a round of candidates takes about this long on CPU


@dataclass
class LockstepStats:
    """What the scheduler did: rounds run and how many requests shared them."""

    prefills: int = 0
    round_sizes: dict[int, int] = field(default_factory=dict)  # requests in a round -> how many such rounds

    @property
    def rounds(self) -> int:
        return sum(self.round_sizes.values())

    @property
    def drafts(self) -> int:
        """Request-rounds served (a round of 8 requests counts 8)."""
        return sum(size * count for size, count in self.round_sizes.items())

    @property
    def largest_round(self) -> int:
        return max(self.round_sizes, default=0)

    @property
    def mean_round(self) -> float:
        """Requests per round on average: 1.0 means no batching happened."""
        return self.drafts / self.rounds if self.rounds else 0.0


@dataclass
class _Waiting:
    request: DraftRequest
    future: Future[list[Candidate]]
    since: float


def supports_lockstep(backend: object) -> bool:
    """True when `backend` declares it can draft for several generations at once."""
    return backend_capabilities(backend).batch_drafting


class LockstepBackend(BackendWrapper):
    """A `Backend` whose concurrent generations draft in shared batched rounds (module docstring)."""

    def __init__(
        self,
        inner: Backend,
        *,
        max_wait_s: float = 1.0,
        max_round: int = 32,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`clock` (seconds) times the patience rule; a test passes a settable one to decide when it fires."""
        if not supports_lockstep(inner):
            raise ConfigError(
                f"backend {inner.model_name!r} cannot draft for several requests at once (no draft_batch): "
                "lockstep batching needs a local backend such as TransformersBackend"
            )
        if max_wait_s < 0:
            raise ConfigError(f"max_wait_s must be >= 0 seconds, got {max_wait_s}")
        if max_round < 1:
            raise ConfigError(f"max_round must be >= 1 request, got {max_round}")
        super().__init__(inner)
        self._drafter = cast(BatchDrafter, inner)
        self._opens_in_batches = backend_capabilities(inner).batch_opening
        self.max_wait_s = max_wait_s
        self.max_round = max_round
        self.stats = LockstepStats()
        self._clock = clock
        self._cond = threading.Condition()
        self._openings: list[tuple[OpenRequest, Future[Generation]]] = []
        self._calls: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._waiting: list[_Waiting] = []
        self._open = 0
        self._free_since = 0.0  # when the scheduler thread last finished a call or round
        self._gap_s = _GAP_PRIOR_S  # moving average: a round's end to the same request's next draft
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def open_generations(self) -> int:
        """Generations opened and not yet closed."""
        with self._cond:
            return self._open

    @property
    def waiting_drafts(self) -> int:
        """Drafts queued for the next round."""
        with self._cond:
            return len(self._waiting)

    def open(self, request: OpenRequest) -> LockstepGeneration:
        """Queue `request` for the next prefill on the scheduler thread and wait for it."""
        future: Future[Generation] = Future()
        with self._cond:
            self._check_running()
            self._openings.append((request, future))
            self._cond.notify_all()
        return LockstepGeneration(self, future.result())

    def close(self) -> None:
        """Stop the scheduler thread; waiting calls fail with a clear error. Idempotent."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # Called by generations -----------------------------------------------------------------------

    def _draft(self, request: DraftRequest, previous_round_end: float | None) -> tuple[list[Candidate], float]:
        """Join the next round; returns its candidates and when the round ended."""
        future: Future[list[Candidate]] = Future()
        with self._cond:
            self._check_running()
            now = self._clock()
            if previous_round_end is not None:
                self._gap_s = _GAP_SMOOTHING * (now - previous_round_end) + (1 - _GAP_SMOOTHING) * self._gap_s
            self._waiting.append(_Waiting(request, future, now))
            self._cond.notify_all()
        candidates = future.result()
        return candidates, self._clock()

    def _release(self) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify_all()  # the waiting round may now be complete

    def _check_running(self) -> None:
        if self._stopping:
            raise RuntimeError("this LockstepBackend is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="stars-lockstep", daemon=True)
            self._thread.start()

    # The scheduler thread ------------------------------------------------------------------------

    def run_on_scheduler(self, call: Callable[[], Any]) -> Any:
        """Run `call` on the scheduler thread between rounds and return its result.

        `BatchingReward` scores here, so one thread does all of a process's model work: torch
        threads of a second thread would compete with the drafting ones for the same cores.
        """
        future: Future[Any] = Future()
        with self._cond:
            self._check_running()
            self._calls.append((call, future))
            self._cond.notify_all()
        return future.result()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._openings and not self._calls and not self._round_ready():
                    if self._stopping:
                        self._fail_all(RuntimeError("this LockstepBackend was closed"))
                        return
                    self._cond.wait(self._seconds_to_deadline())
                # Prefill and scoring first: new requests join, and scored ones come back for, the next round.
                openings, self._openings = self._openings, []
                calls, self._calls = self._calls, []
                batch: list[_Waiting] = []
                if not openings and not calls:
                    batch, self._waiting = self._waiting[: self.max_round], self._waiting[self.max_round :]
            if openings:
                self._prefill(openings)
            for call, future in calls:
                _settle(future, call)
            if batch:
                self._run_round(batch)
            with self._cond:
                self._free_since = self._clock()

    def _prefill(self, openings: list[tuple[OpenRequest, Future[Generation]]]) -> None:
        """Open waiting requests, in one batched prefill where the backend can."""
        requests = [request for request, _ in openings]
        try:
            if self._opens_in_batches and len(requests) > 1:
                results: list[Any] = list(cast(BatchOpener, self.inner).open_batch(requests))
            else:
                results = [_open_one(self.inner, request) for request in requests]
        except BaseException as exc:
            results = [exc] * len(requests)
        opened = sum(not isinstance(result, BaseException) for result in results)
        with self._cond:  # counted before the scheduler looks at the next round: it waits for these
            self._open += opened
            self.stats.prefills += opened
        for (_, future), result in zip(openings, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _round_ready(self) -> bool:
        """All open generations are waiting, the round is full, or the first one waited long enough."""
        if not self._waiting:
            return False
        if len(self._waiting) >= min(self._open, self.max_round) or self._stopping:
            return True
        return self._clock() >= self._deadline()

    def _deadline(self) -> float:
        """The patience clock starts when the first draft waits and the scheduler is free."""
        patience = min(self.max_wait_s, _MIN_PATIENCE_S + _GAP_MULTIPLE * self._gap_s)
        return max(self._waiting[0].since, self._free_since) + patience

    def _seconds_to_deadline(self) -> float | None:
        if not self._waiting:
            return None
        return max(0.0, self._deadline() - self._clock())

    def _run_round(self, batch: list[_Waiting]) -> None:
        self.stats.round_sizes[len(batch)] = self.stats.round_sizes.get(len(batch), 0) + 1
        try:
            results = self._drafter.draft_batch([waiting.request for waiting in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"draft_batch returned {len(results)} results for {len(batch)} requests")
        except BaseException as exc:  # every request of the round learns why it failed
            for waiting in batch:
                waiting.future.set_exception(exc)
            return
        for waiting, candidates in zip(batch, results, strict=True):
            waiting.future.set_result(candidates)

    def _fail_all(self, error: Exception) -> None:
        for waiting in self._waiting:
            waiting.future.set_exception(error)
        for _, future in [*self._openings, *self._calls]:
            future.set_exception(error)
        self._waiting, self._openings, self._calls = [], [], []


def _settle(future: Future[Any], call: Callable[[], Any]) -> None:
    try:
        future.set_result(call())
    except BaseException as exc:
        future.set_exception(exc)


def _open_one(backend: Backend, request: OpenRequest) -> Generation | BaseException:
    try:
        return backend.open(request)
    except Exception as exc:
        return exc


class LockstepGeneration(GenerationWrapper):
    """One request's generation; its drafts join the scheduler's shared rounds."""

    def __init__(self, backend: LockstepBackend, inner: Generation) -> None:
        super().__init__(inner)
        self._backend = backend
        self._closed = False
        self._last_round_end: float | None = None

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        if self._closed:
            raise RuntimeError("this generation is closed")
        request = DraftRequest(self.inner, num_candidates, max_tokens, entropy_cut)
        candidates, self._last_round_end = self._backend._draft(request, self._last_round_end)
        return candidates

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.inner.close()
            self._backend._release()
