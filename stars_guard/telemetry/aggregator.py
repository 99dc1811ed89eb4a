"""The framework-free aggregate of STARS decisions: rates, windows and the observers fed from them.

`RejectionStats` takes the per-decision payloads (`segment_payload`) of each request, settles them
into segments, and hands every request, decision and settled segment to its `StatsObserver`s
(Prometheus, OpenTelemetry, the dashboard). It knows nothing about LangChain: the LangChain
handler (`stars_guard.langchain.callbacks.RejectionStatsHandler`) and the chat service both feed it.
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

from stars_guard.events import CandidateJudged
from stars_guard.policy import quantile_of_sorted

logger = logging.getLogger(__name__)

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
    "part",
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
        "part": event.part,
    }
    if include_text:
        payload["text"] = event.text
    return payload


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


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
            "p50": quantile_of_sorted(ordered, 0.5),
            "p90": quantile_of_sorted(ordered, 0.9),
            "p99": quantile_of_sorted(ordered, 0.99),
        }


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
