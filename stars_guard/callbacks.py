"""Every STARS decision as LangChain callback data, and `RejectionStatsHandler` to aggregate it.

Two ways decisions reach handlers (docs/langchain.md):
- a `stars_segment` custom event per judged candidate, dispatched under the chat model's own run
  id wherever LangChain hands the model a run manager (invoke, ainvoke, batch, abatch, and
  `stream_events(version="v3")`);
- `stream()`, `astream()` and streaming invokes give the model no run manager, so the same
  decisions (never with text) ride on each chunk as `STARSGenerationChunk.stars_segments`, which
  handlers see in `on_llm_new_token(..., chunk=...)`.
Either way the final message lists them all in `response_metadata["stars_segments"]`.

`RejectionStatsHandler` takes decisions from whichever source arrives and reconciles each run
against the final message, so nothing is counted twice or lost. Custom events are best effort:
a failing handler never fails the call.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

try:
    from langchain_core.callbacks import (
        AsyncCallbackManager,
        AsyncCallbackManagerForLLMRun,
        BaseCallbackHandler,
        CallbackManager,
        CallbackManagerForLLMRun,
    )
    from langchain_core.outputs import LLMResult
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("stars_guard.callbacks needs langchain-core: pip install 'stars-guard[langchain]'") from exc

from stars_guard.engine import CandidateJudged

logger = logging.getLogger(__name__)

STARS_SEGMENT_EVENT = "stars_segment"
LLM_TYPE = "stars-guard"  # `_type` in the invocation params of STARSChatModel runs
DECISION_KEYS = (
    "segment_index",
    "attempt",
    "reward",
    "threshold",
    "accepted",
    "fallback",
    "tokens",
    "vetoed",
    "safety",
)


def segment_payload(event: CandidateJudged, *, include_text: bool = False) -> dict[str, Any]:
    """The `stars_segment` event data for one decision (JSON-safe; text only when opted in)."""
    payload: dict[str, Any] = {
        "segment_index": event.segment_index,
        "attempt": event.attempt,
        "reward": _finite(event.reward),
        "threshold": _finite(event.threshold),
        "accepted": event.accepted,
        "fallback": event.fallback,
        "tokens": event.tokens,
        "vetoed": event.vetoed,
        "safety": None if event.safety is None else _finite(event.safety),
    }
    if include_text:
        payload["text"] = event.text
    return payload


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _manager_for(run_manager: Any, manager_class: type[Any]) -> Any:
    """A callback manager whose parent is the chat model's run: events then carry its run id."""
    if run_manager is None or not run_manager.handlers:
        return None
    return manager_class(
        handlers=run_manager.handlers,
        inheritable_handlers=run_manager.inheritable_handlers,
        parent_run_id=run_manager.run_id,
        tags=run_manager.tags,
        inheritable_tags=run_manager.inheritable_tags,
        metadata=run_manager.metadata,
        inheritable_metadata=run_manager.inheritable_metadata,
    )


class _Warner:
    def __init__(self) -> None:
        self._warned = False

    def __call__(self, exc: Exception) -> None:
        if not self._warned:  # once per request: a broken handler would otherwise flood the log
            self._warned = True
            logger.warning("a callback handler failed on a %s event (ignored): %r", STARS_SEGMENT_EVENT, exc)


class SegmentEventDispatcher:
    """Sends `stars_segment` events under the chat model's run. Never raises."""

    def __init__(self, run_manager: CallbackManagerForLLMRun | None) -> None:
        self._manager = _manager_for(run_manager, CallbackManager)
        self._run_id = run_manager.run_id if run_manager is not None else None
        self._warn = _Warner()

    def __call__(self, payload: Mapping[str, Any]) -> None:
        if self._manager is None:
            return
        try:
            self._manager.on_custom_event(STARS_SEGMENT_EVENT, dict(payload), run_id=self._run_id)
        except Exception as exc:  # a handler with raise_error=True failed: the answer goes on
            self._warn(exc)


class AsyncSegmentEventDispatcher:
    """The async twin: async handlers are awaited on the event loop. Never raises."""

    def __init__(self, run_manager: AsyncCallbackManagerForLLMRun | None) -> None:
        self._manager = _manager_for(run_manager, AsyncCallbackManager)
        self._run_id = run_manager.run_id if run_manager is not None else None
        self._warn = _Warner()

    async def __call__(self, payload: Mapping[str, Any]) -> None:
        if self._manager is None:
            return
        try:
            await self._manager.on_custom_event(STARS_SEGMENT_EVENT, dict(payload), run_id=self._run_id)
        except Exception as exc:
            self._warn(exc)


# Aggregation (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """What an exporter may know about a request: no prompt text."""

    run_id: UUID
    model_name: str
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class SegmentOutcome:
    """A segment once settled: how many candidates it took and what became of it."""

    segment_index: int
    outcome: str  # accepted | fallback | dropped (nothing emitted: the answer ended with a refusal or time budget)
    attempts: int
    rejected: int
    reward: float | None  # reward of the emitted candidate; None when nothing was emitted


@dataclass(frozen=True)
class RequestRecord:
    """One finished request, as the handler attributes it."""

    run_id: UUID
    model_name: str
    finish_reason: str
    stats: Mapping[str, Any]
    latency_s: float
    first_chunk_s: float | None
    decisions: int


class StatsObserver(Protocol):
    """Receives the handler's aggregated view as it happens (Prometheus, OpenTelemetry, ...)."""

    def request_started(self, run: RunInfo) -> None: ...

    def decision(self, run: RunInfo, decision: Mapping[str, Any]) -> None: ...

    def segment_settled(self, run: RunInfo, segment: SegmentOutcome) -> None: ...

    def request_finished(self, run: RunInfo, record: RequestRecord) -> None: ...

    def request_failed(self, run: RunInfo, error: BaseException) -> None: ...


class _Window:
    """Count, mean and extremes over everything seen; quantiles over a bounded recent window."""

    def __init__(self, size: int) -> None:
        self.count = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf
        self.recent: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.recent.append(value)

    def summary(self) -> dict[str, float | int | None]:
        if not self.count:
            return {"count": 0, "mean": None, "min": None, "max": None, "p50": None, "p90": None, "p99": None}
        ordered = sorted(self.recent)
        return {
            "count": self.count,
            "mean": self.total / self.count,
            "min": self.low,
            "max": self.high,
            "p50": _quantile(ordered, 0.5),
            "p90": _quantile(ordered, 0.9),
            "p99": _quantile(ordered, 0.99),
        }


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class _RunState:
    """Decisions of one request in flight, keyed so a decision seen twice counts once."""

    info: RunInfo
    started: float
    first_chunk: float | None = None
    seen: set[tuple[int, int, bool]] = field(default_factory=set)
    judged: Counter[int] = field(default_factory=Counter)  # segment_index -> judged candidates
    settled: set[int] = field(default_factory=set)


@dataclass
class _PerSegment:
    judged: int = 0
    rejected: int = 0
    accepted_rewards: _Window = field(default_factory=lambda: _Window(1024))
    rewards: _Window = field(default_factory=lambda: _Window(1024))


class RejectionStats:
    """Thread-safe aggregation of STARS decisions and requests across runs. No LangChain here.

    Counting follows the per-response statistics exactly: a judged candidate counts once in
    `candidates_sampled`; a candidate later chosen as fallback moves from rejected to fallback.
    Rejections are settled per segment (when it is accepted, falls back, or the answer ends), so
    totals always equal the sum of the responses' `stars` blocks.
    """

    def __init__(self, observers: Iterable[StatsObserver] = (), window: int = 4096, recent: int = 64) -> None:
        self._lock = threading.Lock()
        self._observers = list(observers)
        self._runs: dict[UUID, _RunState] = {}
        self._outcomes: Counter[str] = Counter()
        self._totals: Counter[str] = Counter()
        self._attempts: Counter[int] = Counter()
        self._rewards = {"accepted": _Window(window), "rejected": _Window(window), "fallback": _Window(window)}
        self._latency = _Window(window)
        self._first_chunk = _Window(window)
        self._segments: dict[int, _PerSegment] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self._observer_warned: set[str] = set()

    # Inputs -------------------------------------------------------------------------------------

    def start(self, info: RunInfo, now: float | None = None) -> None:
        with self._lock:
            self._runs[info.run_id] = _RunState(info, time.perf_counter() if now is None else now)
        self._notify("request_started", info)

    def first_chunk(self, run_id: UUID, now: float | None = None) -> None:
        with self._lock:
            state = self._runs.get(run_id)
            if state is not None and state.first_chunk is None:
                state.first_chunk = time.perf_counter() if now is None else now

    def decisions(self, run_id: UUID, decisions: Iterable[Mapping[str, Any]]) -> None:
        """Live decisions of a run in flight, from events or chunks (a decision seen twice counts once)."""
        with self._lock:
            state = self._runs.get(run_id)
            if state is None:
                return
            notes = [note for decision in decisions for note in self._ingest(state, decision)]
        self._deliver(state.info, notes)

    def finish(
        self,
        run_id: UUID,
        model_name: str,
        finish_reason: str,
        stats: Mapping[str, Any],
        decisions: Sequence[Mapping[str, Any]],
        now: float | None = None,
    ) -> RequestRecord:
        """The final message of a run: fill in any decision the live sources missed, then total it."""
        end = time.perf_counter() if now is None else now
        with self._lock:
            state = self._runs.pop(run_id, None)
            if state is None:  # the start was not seen: count the run from its statistics alone
                state = _RunState(RunInfo(run_id, model_name), end - float(stats.get("elapsed_s") or 0.0))
            notes = [note for decision in decisions for note in self._ingest(state, decision)]
            notes.extend(self._settle_rest(state))
            record = RequestRecord(
                run_id=run_id,
                model_name=model_name,
                finish_reason=finish_reason,
                stats=dict(stats),
                latency_s=end - state.started,
                first_chunk_s=None if state.first_chunk is None else state.first_chunk - state.started,
                decisions=len(state.seen),
            )
            self._outcomes[finish_reason] += 1
            for key in (
                "prompt_tokens",
                "tokens_sampled",
                "tokens_emitted",
                "reward_calls",
                "llm_calls",
                "candidates_sampled",
                "candidates_rejected",
                "segments_accepted",
                "segments_fallback",
            ):
                self._totals[f"stats_{key}"] += int(stats.get(key) or 0)
            self._totals["refusals"] += int(bool(stats.get("refused")))
            self._latency.add(record.latency_s)
            if record.first_chunk_s is not None:
                self._first_chunk.add(record.first_chunk_s)
            self._recent.append(_recent_entry(record, state))
        self._deliver(state.info, notes)
        self._notify("request_finished", state.info, record)
        return record

    def fail(self, run_id: UUID, error: BaseException) -> None:
        with self._lock:
            state = self._runs.pop(run_id, None)
            if state is None:
                return
            notes = list(self._settle_rest(state))
            self._outcomes["error"] += 1
        self._deliver(state.info, notes)
        self._notify("request_failed", state.info, error)

    def is_tracked(self, run_id: UUID) -> bool:
        with self._lock:
            return run_id in self._runs

    # Output -------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-safe copy of everything aggregated so far."""
        with self._lock:
            judged = self._totals["judged"]
            rejected = self._totals["rejected"]
            finished = sum(self._outcomes.values())
            attempts_count = sum(self._attempts.values())
            return {
                "requests": {
                    "finished": finished,
                    "in_flight": len(self._runs),
                    "by_outcome": dict(self._outcomes),
                },
                "segments": {
                    "accepted": self._totals["accepted"],
                    "fallback": self._totals["fallback"],
                    "dropped": self._totals["dropped"],
                },
                "candidates": {"judged": judged, "rejected": rejected},
                "rejection_rate": rejected / judged if judged else 0.0,
                "refusals": self._totals["refusals"],
                "refusal_rate": self._totals["refusals"] / finished if finished else 0.0,
                "attempts_per_segment": {
                    "count": attempts_count,
                    "mean": (sum(k * v for k, v in self._attempts.items()) / attempts_count)
                    if attempts_count
                    else None,
                    "max": max((k for k, v in self._attempts.items() if v), default=None),
                    "histogram": {str(k): v for k, v in sorted(self._attempts.items()) if v},
                },
                "reward": {name: window.summary() for name, window in self._rewards.items()},
                "tokens": {
                    "prompt": self._totals["stats_prompt_tokens"],
                    "sampled": self._totals["stats_tokens_sampled"],
                    "emitted": self._totals["stats_tokens_emitted"],
                },
                "calls": {"llm": self._totals["stats_llm_calls"], "reward": self._totals["stats_reward_calls"]},
                "reported": {
                    key: self._totals[f"stats_{key}"]
                    for key in ("candidates_sampled", "candidates_rejected", "segments_accepted", "segments_fallback")
                },
                "latency_s": self._latency.summary(),
                "first_chunk_s": self._first_chunk.summary(),
                "per_segment": [
                    {
                        "segment_index": index,
                        "judged": seg.judged,
                        "rejected": seg.rejected,
                        "rejection_rate": seg.rejected / seg.judged if seg.judged else 0.0,
                        "mean_reward": seg.rewards.summary()["mean"],
                        "mean_emitted_reward": seg.accepted_rewards.summary()["mean"],
                    }
                    for index, seg in sorted(self._segments.items())
                ],
                "recent": [dict(entry) for entry in self._recent],
            }

    # Internals (called with the lock held) -----------------------------------------------------

    def _ingest(self, state: _RunState, decision: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """Count one decision unless already seen; returns observer notes to send after unlocking."""
        segment, attempt, fallback = (
            int(decision["segment_index"]),
            int(decision["attempt"]),
            bool(decision["fallback"]),
        )
        key = (segment, attempt, fallback)
        if key in state.seen:
            return []
        state.seen.add(key)
        notes: list[tuple[str, Any]] = [("decision", dict(decision))]
        reward = decision.get("reward")
        per_segment = self._segments.setdefault(segment, _PerSegment())
        if fallback:
            if reward is not None:
                self._rewards["fallback"].add(float(reward))
            notes.extend(self._settle(state, segment, "fallback", reward))
            return notes
        state.judged[segment] += 1
        self._totals["judged"] += 1
        per_segment.judged += 1
        if reward is not None:
            per_segment.rewards.add(float(reward))
            self._rewards["accepted" if decision["accepted"] else "rejected"].add(float(reward))
        if decision["accepted"]:
            notes.extend(self._settle(state, segment, "accepted", reward))
        elif segment in state.settled:
            # A rejection that arrived after its segment settled (a live event was lost and the
            # final message filled it in): move the segment to its true attempt count.
            self._totals["rejected"] += 1
            per_segment.rejected += 1
            self._attempts[state.judged[segment] - 1] -= 1
            self._attempts[state.judged[segment]] += 1
        return notes

    def _settle(self, state: _RunState, segment: int, outcome: str, reward: Any) -> list[tuple[str, Any]]:
        if segment in state.settled:
            return []
        state.settled.add(segment)
        judged = state.judged[segment]
        emitted = outcome in ("accepted", "fallback")
        rejected = judged - 1 if emitted else judged
        self._totals["rejected"] += rejected
        self._totals[outcome] += 1
        self._attempts[judged] += 1
        per_segment = self._segments.setdefault(segment, _PerSegment())
        per_segment.rejected += rejected
        if emitted and reward is not None:
            per_segment.accepted_rewards.add(float(reward))
        value = float(reward) if emitted and reward is not None else None
        return [("segment_settled", SegmentOutcome(segment, outcome, judged, rejected, value))]

    def _settle_rest(self, state: _RunState) -> list[tuple[str, Any]]:
        """Segments judged but never emitted: the refusal (or time budget) ended the answer there."""
        notes: list[tuple[str, Any]] = []
        for segment in sorted(state.judged):
            if segment not in state.settled:
                notes.extend(self._settle(state, segment, "dropped", None))
        return notes

    def _deliver(self, info: RunInfo, notes: list[tuple[str, Any]]) -> None:
        for method, value in notes:
            self._notify(method, info, value)

    def _notify(self, method: str, *args: Any) -> None:
        for observer in self._observers:
            try:
                getattr(observer, method)(*args)
            except Exception as exc:  # an exporter must never break a request or the handler
                name = f"{type(observer).__name__}.{method}"
                if name not in self._observer_warned:
                    self._observer_warned.add(name)
                    logger.warning("stars-guard stats observer %s failed (ignored from now on): %r", name, exc)


def _recent_entry(record: RequestRecord, state: _RunState) -> dict[str, Any]:
    stats = record.stats
    return {
        "run_id": str(record.run_id),
        "model_name": record.model_name,
        "finish_reason": record.finish_reason,
        "segments": len(state.settled),
        "decisions": record.decisions,
        "candidates_sampled": stats.get("candidates_sampled"),
        "candidates_rejected": stats.get("candidates_rejected"),
        "rejection_rate": stats.get("rejection_rate"),
        "mean_accepted_reward": stats.get("mean_accepted_reward"),
        "tokens_emitted": stats.get("tokens_emitted"),
        "refused": stats.get("refused"),
        "latency_s": record.latency_s,
        "first_chunk_s": record.first_chunk_s,
    }


# The LangChain handler ---------------------------------------------------------------------------


class RejectionStatsHandler(BaseCallbackHandler):
    """Aggregates STARS rejection statistics across runs; attach it like any callback handler.

    `llm.invoke(x, config={"callbacks": [handler]})`, or `STARSChatModel(callbacks=[handler])`.
    Only STARSChatModel runs are counted. Safe across threads and concurrent async calls.
    `observers` (e.g. `telemetry.PrometheusExporter()`, `telemetry.OpenTelemetryExporter()`)
    receive every request, decision and settled segment as it is aggregated.
    """

    run_inline = True  # cheap and lock-protected: no thread hop per event on the async path
    raise_error = False

    def __init__(self, observers: Iterable[StatsObserver] = (), *, window: int = 4096, recent: int = 64) -> None:
        super().__init__()
        self.stats = RejectionStats(observers, window=window, recent=recent)

    def snapshot(self) -> dict[str, Any]:
        """Totals, rates, distributions, per-segment profile and recent requests (JSON-safe)."""
        return self.stats.snapshot()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        params = invocation_params or {}
        if params.get("_type") != LLM_TYPE:
            return
        max_tokens = params.get("max_tokens")
        temperature = params.get("temperature")
        self.stats.start(
            RunInfo(
                run_id=run_id,
                model_name=str(params.get("model") or "unknown"),
                temperature=float(temperature) if isinstance(temperature, int | float) else None,
                max_tokens=int(max_tokens) if isinstance(max_tokens, int) else None,
            )
        )

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == STARS_SEGMENT_EVENT and isinstance(data, Mapping):
            self.stats.decisions(run_id, [data])

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        if not self.stats.is_tracked(run_id):
            return
        if token:
            self.stats.first_chunk(run_id)
        decisions = getattr(chunk, "stars_segments", None)
        if decisions:
            self.stats.decisions(run_id, decisions)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        message = _message_of(response)
        metadata = getattr(message, "response_metadata", None) or {}
        stats = metadata.get("stars")
        if not isinstance(stats, Mapping):
            return  # not a STARS answer
        self.stats.finish(
            run_id,
            model_name=str(metadata.get("model_name") or "unknown"),
            finish_reason=str(metadata.get("finish_reason") or "unknown"),
            stats=stats,
            decisions=list(metadata.get("stars_segments") or []),
        )

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.stats.fail(run_id, error)


def _message_of(response: LLMResult) -> Any:
    for generations in response.generations:
        for generation in generations:
            message = getattr(generation, "message", None)
            if message is not None:
                return message
    return None
