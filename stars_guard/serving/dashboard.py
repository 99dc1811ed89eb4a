"""The live rejection-rate dashboard behind `stars-guard serve` at `/dashboard` (docs/dashboard.md).

`DashboardRecorder` is a `StatsObserver`: beside the Prometheus exporter it receives every judged
candidate, settled segment and finished request from `RejectionStats`, and keeps them in short
time buckets (1 s, the last 15 minutes by default) so the page can draw rates over time without a
Prometheus server. `dashboard_routes()` serves the page, its script and style (all local: no CDN,
the dashboard works offline) and `/dashboard/data`, the JSON the page polls every second.

Counting follows the Prometheus exporter exactly: candidates and rejections are counted when their
segment settles (a rejected candidate may still become the fallback), so the recorder's window
sums agree with `rate(stars_segments_total{outcome="rejected"}) / rate(stars_candidates_total)`.
No prompt or answer text is ever recorded. Needs only starlette (the `server` extra), no torch.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from uuid import UUID

from stars_guard.telemetry.aggregator import RejectionStats, RequestRecord, RunInfo, SegmentOutcome

__all__ = [
    "DEFAULT_BUCKET_S",
    "DEFAULT_RETENTION_S",
    "STATIC_FILES",
    "DashboardRecorder",
    "dashboard_payload",
    "dashboard_routes",
]

DEFAULT_BUCKET_S = 1.0
DEFAULT_RETENTION_S = 900.0
DEFAULT_WINDOW_S = 300.0
REWARD_BINS = 20
# Served from stars_guard/serving/static; a fixed list, so no request path ever reaches the file system.
STATIC_FILES: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PAGE = "dashboard.html"
BAD_QUERY = "window and step must be positive numbers of seconds"


@dataclass
class _Bucket:
    """Everything that happened in one time bucket."""

    judged: int = 0
    rejected: int = 0
    segments: int = 0
    attempts: Counter[int] = field(default_factory=Counter)
    reward_sum: float = 0.0
    reward_count: int = 0
    started: int = 0
    finished: Counter[str] = field(default_factory=Counter)
    refusals: int = 0
    in_flight_max: int = 0
    in_flight_last: int = 0


class DashboardRecorder:
    """A `StatsObserver` keeping a bounded time series of STARS decisions for the dashboard.

    Thread-safe: the server's worker threads report into it while the data route reads it.
    Memory is bounded by `retention_s / bucket_s` buckets and `max_rewards` reward samples.
    `clock` returns wall-clock seconds (epoch), so the page can label its time axis.
    """

    def __init__(
        self,
        *,
        bucket_s: float = DEFAULT_BUCKET_S,
        retention_s: float = DEFAULT_RETENTION_S,
        max_rewards: int = 20_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if bucket_s <= 0 or retention_s < bucket_s:
            raise ValueError("need bucket_s > 0 and retention_s >= bucket_s")
        self.bucket_s = float(bucket_s)
        self.retention_s = float(retention_s)
        self._keep = math.ceil(retention_s / bucket_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[int, _Bucket] = {}
        self._rewards: deque[tuple[float, float, bool]] = deque(maxlen=max_rewards)
        self._in_flight: set[UUID] = set()
        self._carried_in_flight = 0  # the in-flight count at the end of the newest pruned bucket

    # StatsObserver ------------------------------------------------------------------------------

    def request_started(self, run: RunInfo) -> None:
        with self._lock:
            self._in_flight.add(run.run_id)
            bucket = self._bucket()
            bucket.started += 1
            self._note_in_flight(bucket)

    def decision(self, run: RunInfo, decision: Mapping[str, Any]) -> None:
        """Rewards of judged candidates (a fallback re-emits an earlier candidate: not counted again)."""
        reward = decision.get("reward")
        if decision.get("fallback") or reward is None or not math.isfinite(float(reward)):
            return
        with self._lock:
            now = self._clock()
            bucket = self._bucket(now)
            bucket.reward_sum += float(reward)
            bucket.reward_count += 1
            self._rewards.append((now, float(reward), bool(decision.get("accepted"))))

    def segment_settled(self, run: RunInfo, segment: SegmentOutcome) -> None:
        with self._lock:
            bucket = self._bucket()
            bucket.judged += segment.attempts
            bucket.rejected += segment.rejected
            bucket.segments += 1
            bucket.attempts[segment.attempts] += 1

    def request_finished(self, run: RunInfo, record: RequestRecord) -> None:
        with self._lock:
            self._in_flight.discard(run.run_id)
            bucket = self._bucket()
            bucket.finished[record.finish_reason] += 1
            bucket.refusals += int(bool(record.stats.get("refused")))
            self._note_in_flight(bucket)

    def request_failed(self, run: RunInfo, error: BaseException) -> None:
        with self._lock:
            self._in_flight.discard(run.run_id)
            bucket = self._bucket()
            bucket.finished["error"] += 1
            self._note_in_flight(bucket)

    # Output -------------------------------------------------------------------------------------

    def data(self, window_s: float = DEFAULT_WINDOW_S, step_s: float | None = None) -> dict[str, Any]:
        """The time series and window aggregates over the last `window_s` seconds (JSON-safe).

        `step_s` (a multiple of the bucket width; default: about 150 points) merges buckets so a
        long window stays a short payload.
        """
        window_s = min(max(float(window_s), self.bucket_s), self.retention_s)
        buckets_in_window = math.ceil(window_s / self.bucket_s)
        default_step = max(1, math.ceil(buckets_in_window / 150))
        per_point = default_step if step_s is None else max(1, round(float(step_s) / self.bucket_s))
        with self._lock:
            now = self._clock()
            newest = self._index(now)
            self._prune(newest)
            # Points start on multiples of the step, so a point keeps its value from poll to poll;
            # the newest one is the step still in progress, the oldest may be cut by the retention.
            first = max(newest - self._keep + 1, (newest - buckets_in_window + 1) // per_point * per_point)
            series = self._series(first, newest, per_point)
            window = self._window(first, newest)
            in_flight = len(self._in_flight)
        return {
            "generated_at": now,
            "bucket_s": self.bucket_s,
            "retention_s": self.retention_s,
            "window_s": (newest - first + 1) * self.bucket_s,
            "step_s": per_point * self.bucket_s,
            "in_flight": in_flight,
            "series": series,
            "window": window,
        }

    # Internals (called with the lock held) -----------------------------------------------------

    def _index(self, now: float) -> int:
        return math.floor(now / self.bucket_s)

    def _bucket(self, now: float | None = None) -> _Bucket:
        index = self._index(self._clock() if now is None else now)
        bucket = self._buckets.get(index)
        if bucket is None:
            self._prune(index)
            bucket = self._buckets[index] = _Bucket(in_flight_last=len(self._in_flight))
            bucket.in_flight_max = bucket.in_flight_last
        return bucket

    def _note_in_flight(self, bucket: _Bucket) -> None:
        bucket.in_flight_last = len(self._in_flight)
        bucket.in_flight_max = max(bucket.in_flight_max, bucket.in_flight_last)

    def _prune(self, newest: int) -> None:
        oldest = newest - self._keep + 1
        for index in [index for index in self._buckets if index < oldest]:
            self._carried_in_flight = self._buckets.pop(index).in_flight_last
        while self._rewards and self._index(self._rewards[0][0]) < oldest:
            self._rewards.popleft()

    def _series(self, first: int, newest: int, per_point: int) -> dict[str, list[Any]]:
        keys = ("t", "judged", "rejected", "rejection_rate", "segments", "mean_attempts", "mean_reward")
        out: dict[str, list[Any]] = {key: [] for key in (*keys, "started", "finished", "refusals", "in_flight")}
        in_flight = self._carried_in_flight
        for index in sorted(i for i in self._buckets if i < first):
            in_flight = self._buckets[index].in_flight_last
        for group in range(first // per_point * per_point, newest + 1, per_point):
            start = max(group, first)
            merged = _Bucket()
            peak = in_flight
            for index in range(start, min(group + per_point, newest + 1)):
                bucket = self._buckets.get(index)
                if bucket is None:
                    continue
                _merge(merged, bucket)
                peak = max(peak, bucket.in_flight_max)
                in_flight = bucket.in_flight_last
            segments_attempts = sum(k * v for k, v in merged.attempts.items())
            out["t"].append(start * self.bucket_s)
            out["judged"].append(merged.judged)
            out["rejected"].append(merged.rejected)
            out["rejection_rate"].append(merged.rejected / merged.judged if merged.judged else None)
            out["segments"].append(merged.segments)
            out["mean_attempts"].append(segments_attempts / merged.segments if merged.segments else None)
            out["mean_reward"].append(merged.reward_sum / merged.reward_count if merged.reward_count else None)
            out["started"].append(merged.started)
            out["finished"].append(sum(merged.finished.values()))
            out["refusals"].append(merged.refusals)
            out["in_flight"].append(peak)
        return out

    def _window(self, first: int, newest: int) -> dict[str, Any]:
        total = _Bucket()
        for index, bucket in self._buckets.items():
            if first <= index <= newest:
                _merge(total, bucket)
        rewards = [(reward, accepted) for when, reward, accepted in self._rewards if self._index(when) >= first]
        finished = sum(total.finished.values())
        segments_attempts = sum(k * v for k, v in total.attempts.items())
        return {
            "judged": total.judged,
            "rejected": total.rejected,
            "rejection_rate": total.rejected / total.judged if total.judged else None,
            "segments": total.segments,
            "mean_attempts": segments_attempts / total.segments if total.segments else None,
            "attempts_histogram": {str(k): v for k, v in sorted(total.attempts.items()) if v},
            "reward_histogram": reward_histogram(rewards),
            "started": total.started,
            "finished": finished,
            "requests_by_outcome": dict(sorted(total.finished.items())),
            "refusals": total.refusals,
            "refusal_rate": total.refusals / finished if finished else None,
        }


def _merge(into: _Bucket, bucket: _Bucket) -> None:
    into.judged += bucket.judged
    into.rejected += bucket.rejected
    into.segments += bucket.segments
    into.attempts.update(bucket.attempts)
    into.reward_sum += bucket.reward_sum
    into.reward_count += bucket.reward_count
    into.started += bucket.started
    into.finished.update(bucket.finished)
    into.refusals += bucket.refusals


def reward_histogram(rewards: list[tuple[float, bool]], bins: int = REWARD_BINS) -> dict[str, Any]:
    """Counts of accepted and rejected rewards per bin.

    Rewards inside [0, 1] (the offline guard's scale) get fixed bins, so bars stay put between
    polls; raw reward-model logits get equal bins over the observed range.
    """
    values = [reward for reward, _ in rewards]
    if not values or (min(values) >= 0.0 and max(values) <= 1.0):
        low, high = 0.0, 1.0
    else:
        low, high = math.floor(min(values) * 10) / 10, math.ceil(max(values) * 10) / 10
        if high <= low:
            high = low + 1.0
    width = (high - low) / bins
    edges = [low + i * width for i in range(bins + 1)]
    accepted = [0] * bins
    rejected = [0] * bins
    for reward, was_accepted in rewards:
        slot = min(bins - 1, max(0, int((reward - low) / width)))
        (accepted if was_accepted else rejected)[slot] += 1
    return {
        "edges": [round(edge, 6) for edge in edges],
        "accepted": accepted,
        "rejected": rejected,
        "count": len(values),
        "mean": sum(values) / len(values) if values else None,
    }


def dashboard_payload(
    stats: RejectionStats,
    recorder: DashboardRecorder,
    window_s: float = DEFAULT_WINDOW_S,
    step_s: float | None = None,
) -> dict[str, Any]:
    """What `/dashboard/data` returns: the recorder's window plus the all-time totals.

    `totals` is `RejectionStats.snapshot()` (its `rejection_rate` is candidates rejected over
    candidates judged since start, with `requests.in_flight`); `headline` repeats the figures the
    page shows at the top so clients need not dig.
    """
    payload = recorder.data(window_s, step_s)
    totals = stats.snapshot()
    attempts = totals["attempts_per_segment"]
    payload["totals"] = totals
    payload["headline"] = {
        "rejection_rate": totals["rejection_rate"],
        "candidates_judged": totals["candidates"]["judged"],
        "candidates_rejected": totals["candidates"]["rejected"],
        "requests_finished": totals["requests"]["finished"],
        "requests_in_flight": totals["requests"]["in_flight"],
        "requests_by_outcome": totals["requests"]["by_outcome"],
        "refusals": totals["refusals"],
        "refusal_rate": totals["refusal_rate"],
        "mean_attempts_per_segment": attempts["mean"],
        "tokens_sampled": totals["tokens"]["sampled"],
        "tokens_emitted": totals["tokens"]["emitted"],
    }
    return payload


# Routes ------------------------------------------------------------------------------------------


def _static_text(name: str) -> str:
    return resources.files("stars_guard.serving").joinpath("static", name).read_text(encoding="utf-8")


def dashboard_routes(
    stats: RejectionStats | None,
    recorder: DashboardRecorder,
    *,
    prefix: str = "/dashboard",
) -> list[Any]:
    """Starlette routes: `GET {prefix}` (page), `{prefix}/data` (JSON), `{prefix}/static/{name}`.

    Pass them to the app (`Starlette(routes=[..., *dashboard_routes(stats, recorder)])`); the
    recorder must be an observer of the same `stats` for the time series to fill. With
    `stats=None` the routes read `request.app.state.stats` on each request: an app that builds its
    own `RejectionStats` (as `app.create_app` does) can take the routes before it exists.
    `/data` takes `?window=SECONDS` (clamped to the recorder's retention) and `?step=SECONDS`;
    bad values get a 400.
    """
    try:
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("the dashboard needs starlette: pip install 'stars-guard[server]'") from exc

    prefix = "/" + prefix.strip("/")
    page_template = _static_text(PAGE)
    assets = {name: (_static_text(name).encode("utf-8"), kind) for name, kind in STATIC_FILES.items()}
    no_cache = {"Cache-Control": "no-cache"}

    async def page(request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")  # set when mounted or behind a proxy
        html = page_template.replace("{{BASE}}", root + prefix).replace("{{ROOT}}", root)
        return Response(html, media_type="text/html; charset=utf-8", headers=no_cache)

    async def data(request: Request) -> Response:
        try:
            window_s = float(request.query_params.get("window", DEFAULT_WINDOW_S))
            step = request.query_params.get("step")
            step_s = None if step is None else float(step)
            if not (math.isfinite(window_s) and window_s > 0) or (
                step_s is not None and not (math.isfinite(step_s) and step_s > 0)
            ):
                raise ValueError
        except ValueError:
            return JSONResponse(
                {"error": {"message": BAD_QUERY, "type": "invalid_request_error"}},
                status_code=400,
            )
        source = stats if stats is not None else getattr(request.app.state, "stats", None)
        if not isinstance(source, RejectionStats):
            raise RuntimeError("dashboard_routes(None, ...) needs app.state.stats set to a RejectionStats")
        payload = dashboard_payload(source, recorder, window_s, step_s)
        return JSONResponse(payload, headers={"Cache-Control": "no-store"})

    async def static(request: Request) -> Response:
        asset = assets.get(request.path_params["name"])
        if asset is None:
            return Response("not found", status_code=404, media_type="text/plain")
        body, kind = asset
        return Response(body, media_type=kind, headers=no_cache)

    return [
        Route(prefix, page, methods=["GET"], name="dashboard"),
        Route(prefix + "/", page, methods=["GET"], name="dashboard_slash"),
        Route(prefix + "/data", data, methods=["GET"], name="dashboard_data"),
        Route(prefix + "/static/{name}", static, methods=["GET"], name="dashboard_static"),
    ]
