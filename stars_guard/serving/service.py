"""`ChatService`: the state behind one chat app, and the worker that runs a request's engine.

A request the handler has parsed is admitted (`Admission`: at most `max_concurrent` at work, up
to `max_queue` waiting), then runs as a `Job` on a worker thread (`bridge.WorkerPool`): the
blocking engine generator, whose events cross to the handler through the job's `LoopChannel`.
The time left before the request's deadline becomes the engine's `time_budget_s`. A client that
leaves sets the job's cancel flag; the worker checks it after every engine event and closes the
generator, which releases the backend's generation (KV cache).

Outcomes are counted once, here: `completed`, `failed` (5xx), `invalid` (a 4xx found while
running, e.g. `context_length_exceeded`: the client's mistake, never an error), `cancelled`,
`queue_full` and `queue_timeout`; `/health` and the Prometheus counters read them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stars_guard.bridge import LoopChannel, WorkerPool
from stars_guard.config import STARSConfig
from stars_guard.engine import STARSEngine
from stars_guard.errors import BackendError, RewardError
from stars_guard.events import CandidateJudged, Finished, TextEmitted
from stars_guard.protocols import Backend, BackendWrapper, Generation, OpenRequest, RewardModel
from stars_guard.round_sizing import RoundCosts
from stars_guard.serving.admission import Admission, DeadlineExceededError, QueueFullError
from stars_guard.serving.errors import error_for, queue_full, queue_timeout, shutting_down
from stars_guard.serving.lockstep import LockstepStats
from stars_guard.serving.schema import ChatRequest
from stars_guard.serving.settings import ServeSettings
from stars_guard.telemetry.aggregator import RejectionStats, RunInfo, segment_payload

logger = logging.getLogger(__name__)

# `stars_requests_total{outcome}` and `/health` for requests that ran but ended in a 4xx (the client's
# mistake, e.g. context_length_exceeded): apart from `error`, so client mistakes never page anyone.
INVALID_OUTCOME = "invalid"


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


OPENED = _Marker("OPENED")  # the backend accepted the prompt (prefill done): a stream may start


@dataclass(frozen=True)
class Failure:
    """The engine (or the pool) failed; the handler answers `error_for(error)`."""

    error: BaseException


@dataclass(eq=False)
class Job:
    """One admitted request as the worker and the handler share it."""

    request_id: str
    run_id: uuid.UUID
    request: ChatRequest
    deadline: float  # time.monotonic()
    events: LoopChannel[Any]  # OPENED, engine events, then a Failure or Finished
    cancelled: threading.Event = field(default_factory=threading.Event)

    def put(self, item: Any) -> None:
        if not self.events.put(item):  # the loop is closed: nobody will read this answer
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


class _OpenNotifier(BackendWrapper):
    """The backend, telling the job when `open` succeeded (a stream's headers wait for that)."""

    def __init__(self, inner: Backend, on_open: Callable[[], None]) -> None:
        super().__init__(inner)
        self._on_open = on_open

    def open(self, request: OpenRequest) -> Generation:
        generation = self.inner.open(request)
        self._on_open()
        return generation


class ChatService:
    """Admission, worker threads, statistics and counters of one app (module docstring)."""

    def __init__(
        self,
        backend: Backend,
        reward: RewardModel,
        config: STARSConfig,
        stats: RejectionStats,
        settings: ServeSettings,
        *,
        lockstep: LockstepStats | None = None,
    ) -> None:
        """`lockstep`: the scheduler's statistics when the backend runs in lockstep (for `/health`)."""
        self.backend = backend
        self.lockstep_stats = lockstep
        self.reward = reward
        self.round_costs = RoundCosts()  # what a round costs on this backend, learnt across requests
        self.config = config
        self.stats = stats
        self.settings = settings
        self.admission = Admission(settings.max_concurrent, settings.max_queue)
        self.model_name = backend.model_name
        self.started = time.time()
        self.counts: Counter[str] = Counter()  # completed, failed, invalid, cancelled, queue_full, queue_timeout
        self.on_count: Callable[[str], None] | None = None  # e.g. a Prometheus counter per name
        self._lock = threading.Lock()
        self._jobs: set[Job] = set()
        self._pool = WorkerPool(settings.max_concurrent, "stars-chat")

    # Counters ---------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests whose engine is running (a cancelled one counts until its worker has stopped)."""
        return self.admission.running

    @property
    def queued(self) -> int:
        return self.admission.waiting

    @property
    def cancelled(self) -> int:
        return self.counts["cancelled"]

    def count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1
        if self.on_count is not None:
            with contextlib.suppress(Exception):  # metrics must never fail a request
                self.on_count(name)

    def health(self) -> dict[str, Any]:
        """`/health`'s body: cheap, never touches the model."""
        return {
            "status": "ok",
            "model": self.model_name,
            "reward": getattr(self.reward, "name", None),
            "in_flight": self.in_flight,
            "queued": self.queued,
            "cancelled": self.cancelled,
            "completed": self.counts["completed"],
            "failed": self.counts["failed"],
            "invalid": self.counts[INVALID_OUTCOME],
            "rejected": self.counts["queue_full"] + self.counts["queue_timeout"],
            "max_concurrent": self.admission.limit,
            "max_queue": self.admission.queue,
            "uptime_s": round(time.time() - self.started, 3),
            "lockstep": self._lockstep(),
        }

    def _lockstep(self) -> dict[str, Any] | None:
        """How concurrent requests shared drafting rounds; None when the backend does not batch them."""
        stats = self.lockstep_stats
        if stats is None:
            return None
        return {
            "rounds": stats.rounds,
            "mean_requests_per_round": round(stats.mean_round, 3),
            "largest_round": stats.largest_round,
        }

    # Lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        """Cancel every job and let the workers wind down (they close their generations)."""
        with self._lock:
            for job in self._jobs:
                job.cancel()
        self._pool.stop()

    # Work -------------------------------------------------------------------------------------

    async def admit(self, timeout: float) -> None:
        """Take a worker slot within `timeout` s, or raise the 429 / 503 (counted) the client gets."""
        try:
            await self.admission.acquire(timeout)
        except QueueFullError:
            self.count("queue_full")
            raise queue_full(self.admission.limit, self.admission.queue, self.settings.retry_after_s) from None
        except DeadlineExceededError:
            self.count("queue_timeout")
            raise queue_timeout(self.settings.retry_after_s) from None

    def launch(self, request: ChatRequest, request_id: str, deadline: float) -> Job:
        """Run an admitted request in a worker thread (the caller holds an admission slot)."""
        job = Job(request_id, uuid.uuid4(), request, deadline, LoopChannel())
        with self._lock:
            self._jobs.add(job)
        try:
            future = self._pool.submit(lambda: self._work(job))
        except RuntimeError:  # shut down meanwhile
            self._abandon(job)
            raise shutting_down() from None
        future.add_done_callback(lambda done: self._abandon(job) if done.cancelled() else None)
        return job

    def _abandon(self, job: Job) -> None:
        """A job whose worker never ran (shutdown): give its slot back and tell its handler."""
        with self._lock:
            self._jobs.discard(job)
        self.admission.release()
        job.put(Failure(shutting_down()))

    def _work(self, job: Job) -> None:
        try:
            self._run(job)
        except BaseException as exc:  # pragma: no cover - _run reports its own failures
            logger.exception("%s: worker failed", job.request_id)
            job.put(Failure(exc))
        finally:
            with self._lock:
                self._jobs.discard(job)
            self.admission.release()

    def _run(self, job: Job) -> None:
        request = job.request
        if job.cancelled.is_set():
            self.count("cancelled")
            return
        remaining = job.deadline - time.monotonic()
        if remaining <= 0:
            self.count("queue_timeout")
            job.put(Failure(DeadlineExceededError()))
            return
        budget = request.config.time_budget_s
        config = request.config.with_overrides(time_budget_s=max(min(budget or math.inf, remaining), 1e-3))
        engine = STARSEngine(
            _OpenNotifier(self.backend, lambda: job.put(OPENED)), self.reward, config, self.round_costs
        )
        run_id = job.run_id
        self.stats.start(
            RunInfo(run_id, self.model_name, temperature=config.temperature, max_tokens=config.max_new_tokens)
        )
        decisions: list[dict[str, Any]] = []
        first_text = True
        finished = False
        events = engine.stream(request.turns, stop=request.stop, constraint=request.constraint)
        try:
            for event in events:
                if isinstance(event, CandidateJudged):
                    payload = segment_payload(event)
                    decisions.append(payload)
                    self.stats.decisions(run_id, [payload])
                elif isinstance(event, TextEmitted):
                    if first_text:
                        first_text = False
                        self.stats.first_chunk(run_id)
                elif isinstance(event, Finished):
                    finished = True
                    result = event.result
                    self.stats.finish(
                        run_id, result.model_name, result.finish_reason, result.stats.as_dict(), decisions
                    )
                    self.count("completed")
                job.put(event)
                if job.cancelled.is_set() and not finished:
                    break
        except Exception as exc:
            self._failed(job, exc, decisions)
            return
        finally:
            events.close()  # on cancel: the engine's `finally` closes the backend generation
        if not finished:
            self.stats.finish(run_id, self.model_name, "cancelled", {}, decisions)
            self.count("cancelled")

    def _failed(self, job: Job, exc: Exception, decisions: list[dict[str, Any]]) -> None:
        if error_for(exc).status < 500:
            # The client's mistake (e.g. a prompt too long for the context window): answered with a
            # 4xx, counted apart so it never feeds the error rate or `failed`.
            self.stats.finish(job.run_id, self.model_name, INVALID_OUTCOME, {}, decisions)
            self.count(INVALID_OUTCOME)
        else:
            self.stats.fail(job.run_id, exc)
            self.count("failed")
            if isinstance(exc, RewardError | BackendError):
                logger.warning("%s: %s: %s", job.request_id, type(exc).__name__, exc)
            else:
                logger.exception("%s: the engine failed", job.request_id)
        job.put(Failure(exc))
