"""DashboardRecorder on fixed inputs: bucketing, steps, rates, retention, and agreement with the
Prometheus exporter and RejectionStats when the real engine (scripted backend) feeds all three."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from stars_guard.engine import STARSEngine
from stars_guard.serving.dashboard import DashboardRecorder, reward_histogram
from stars_guard.telemetry import PrometheusExporter
from stars_guard.telemetry.aggregator import RejectionStats, RequestRecord, RunInfo, SegmentOutcome
from tests.doubles import CONFIG, ROUNDS, KeywordReward
from tests.doubles import SeededBackend as ScriptedBackend
from tests.serving.dashboard.support import metric_values, rejection_from_metrics, run_request


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run() -> RunInfo:
    return RunInfo(uuid.uuid4(), "test-model")


def record(info: RunInfo, finish_reason: str = "stop", refused: bool = False) -> RequestRecord:
    return RequestRecord(info.run_id, info.model_name, finish_reason, {"refused": refused}, 1.0, None, 0)


def settle(recorder: DashboardRecorder, info: RunInfo, attempts: int, outcome: str = "accepted") -> None:
    rejected = attempts - 1 if outcome in ("accepted", "fallback") else attempts
    recorder.segment_settled(info, SegmentOutcome(0, outcome, attempts, rejected, 0.5))


def decision(reward: float | None, accepted: bool, fallback: bool = False) -> dict[str, Any]:
    return {
        "segment_index": 0,
        "attempt": 1,
        "reward": reward,
        "threshold": 0.5,
        "accepted": accepted,
        "fallback": fallback,
        "tokens": 4,
    }


def test_events_land_in_their_one_second_buckets() -> None:
    clock = Clock(1000.2)
    recorder = DashboardRecorder(clock=clock)
    info = run()
    settle(recorder, info, attempts=3)  # 3 judged, 2 rejected at t=1000
    clock.now = 1000.9
    settle(recorder, info, attempts=1)  # same bucket: 4 judged, 2 rejected
    clock.now = 1002.5
    settle(recorder, info, attempts=2)  # t=1002: 2 judged, 1 rejected
    clock.now = 1003.1

    data = recorder.data(window_s=5, step_s=1)
    series = data["series"]
    assert series["t"] == [999.0, 1000.0, 1001.0, 1002.0, 1003.0]
    assert series["judged"] == [0, 4, 0, 2, 0]
    assert series["rejected"] == [0, 2, 0, 1, 0]
    assert series["rejection_rate"] == [None, 0.5, None, 0.5, None]
    assert series["segments"] == [0, 2, 0, 1, 0]
    assert series["mean_attempts"] == [None, 2.0, None, 2.0, None]
    assert data["window_s"] == 5.0 and data["step_s"] == 1.0
    window = data["window"]
    assert (window["judged"], window["rejected"], window["rejection_rate"]) == (6, 3, 0.5)
    assert window["attempts_histogram"] == {"1": 1, "2": 1, "3": 1}
    assert window["mean_attempts"] == 2.0


def test_steps_merge_buckets_on_fixed_boundaries() -> None:
    clock = Clock(0.0)
    recorder = DashboardRecorder(clock=clock)
    info = run()
    for second, attempts in [(10, 4), (11, 1), (14, 2), (15, 3), (21, 1)]:
        clock.now = second + 0.5
        settle(recorder, info, attempts)
    clock.now = 22.0

    data = recorder.data(window_s=12, step_s=5)
    series = data["series"]
    # Points start on multiples of 5; the first covers the window's oldest second, the last is in progress.
    assert series["t"] == [10.0, 15.0, 20.0]
    assert series["judged"] == [7, 3, 1]
    assert series["rejected"] == [4, 2, 0]
    assert series["rejection_rate"] == [4 / 7, 2 / 3, 0.0]
    assert data["step_s"] == 5.0
    # The same points however the window's start falls: a point keeps its value from poll to poll.
    clock.now = 24.9
    assert recorder.data(window_s=12, step_s=5)["series"]["judged"] == [7, 3, 1]


def test_default_step_keeps_the_payload_short() -> None:
    recorder = DashboardRecorder(clock=Clock(5000.0))
    assert len(recorder.data(window_s=900)["series"]["t"]) <= 151
    assert recorder.data(window_s=900)["step_s"] == 6.0
    assert len(recorder.data(window_s=60)["series"]["t"]) == 60


def test_requests_refusals_and_failures_by_outcome() -> None:
    clock = Clock(200.0)
    recorder = DashboardRecorder(clock=clock)
    runs = [run() for _ in range(5)]
    for info in runs:
        recorder.request_started(info)
    clock.now = 201.0
    recorder.request_finished(runs[0], record(runs[0], "stop"))
    recorder.request_finished(runs[1], record(runs[1], "refusal", refused=True))
    recorder.request_finished(runs[2], record(runs[2], "length"))
    recorder.request_failed(runs[3], RuntimeError("backend down"))
    clock.now = 202.0

    data = recorder.data(window_s=3, step_s=1)
    window = data["window"]
    assert window["requests_by_outcome"] == {"error": 1, "length": 1, "refusal": 1, "stop": 1}
    assert window["finished"] == 4 and window["started"] == 5
    assert window["refusals"] == 1 and window["refusal_rate"] == 0.25
    series = data["series"]
    assert series["t"] == [200.0, 201.0, 202.0]
    assert series["started"] == [5, 0, 0]
    assert series["finished"] == [0, 4, 0]
    assert series["refusals"] == [0, 1, 0]
    # In flight: the peak of each step, and the level carried through steps where nothing happened.
    assert series["in_flight"] == [5, 5, 1]
    assert data["in_flight"] == 1
    clock.now = 205.0
    assert recorder.data(window_s=3, step_s=1)["series"]["in_flight"] == [1, 1, 1]


def test_rewards_of_judged_candidates_only() -> None:
    clock = Clock(50.0)
    recorder = DashboardRecorder(clock=clock)
    info = run()
    recorder.decision(info, decision(0.9, accepted=True))
    recorder.decision(info, decision(0.1, accepted=False))
    recorder.decision(info, decision(0.12, accepted=False))
    recorder.decision(info, decision(0.12, accepted=True, fallback=True))  # re-emits a judged candidate
    recorder.decision(info, decision(None, accepted=False))  # the reward call failed
    recorder.decision(info, decision(float("nan"), accepted=False))

    data = recorder.data(window_s=1)
    assert data["series"]["mean_reward"] == [pytest.approx((0.9 + 0.1 + 0.12) / 3)]
    histogram = data["window"]["reward_histogram"]
    assert histogram["count"] == 3
    assert histogram["edges"][0] == 0.0 and histogram["edges"][-1] == 1.0 and len(histogram["edges"]) == 21
    assert histogram["accepted"][18] == 1  # 0.9 in [0.9, 0.95)
    assert histogram["rejected"][2] == 2  # 0.1 and 0.12 in [0.1, 0.15)
    assert sum(histogram["accepted"]) + sum(histogram["rejected"]) == 3


def test_reward_histogram_scales() -> None:
    empty = reward_histogram([])
    assert empty["count"] == 0 and empty["mean"] is None and empty["edges"][-1] == 1.0
    raw = reward_histogram([(-3.2, False), (4.05, True), (0.0, True)], bins=4)
    assert raw["edges"] == [-3.2, -1.375, 0.45, 2.275, 4.1]
    assert raw["rejected"] == [1, 0, 0, 0] and raw["accepted"] == [0, 1, 0, 1]
    flat = reward_histogram([(2.0, True), (2.0, False)], bins=2)
    assert flat["edges"] == [2.0, 2.5, 3.0] and flat["accepted"] == [1, 0] and flat["rejected"] == [1, 0]


def test_retention_bounds_memory_and_window() -> None:
    clock = Clock(0.0)
    recorder = DashboardRecorder(bucket_s=1, retention_s=10, clock=clock)
    info = run()
    for second in range(30):
        clock.now = second + 0.5
        settle(recorder, info, attempts=2)
        recorder.decision(info, decision(0.5, accepted=True))
    assert len(recorder._buckets) == 10
    assert len(recorder._rewards) == 10
    data = recorder.data(window_s=3600, step_s=1)  # clamped to the retention
    assert data["window_s"] == 10.0 and len(data["series"]["t"]) == 10
    assert data["window"]["judged"] == 20 and data["window"]["reward_histogram"]["count"] == 10
    clock.now = 100.0  # long quiet: everything aged out
    assert recorder.data(window_s=10)["window"]["judged"] == 0
    assert len(recorder._buckets) == 0 and len(recorder._rewards) == 0


def test_bad_construction() -> None:
    with pytest.raises(ValueError):
        DashboardRecorder(bucket_s=0)
    with pytest.raises(ValueError):
        DashboardRecorder(bucket_s=10, retention_s=5)


def test_concurrent_reporters_lose_nothing() -> None:
    recorder = DashboardRecorder()
    per_thread = 500

    def report() -> None:
        info = run()
        recorder.request_started(info)
        for _ in range(per_thread):
            settle(recorder, info, attempts=2)
            recorder.decision(info, decision(0.4, accepted=False))
        recorder.request_finished(info, record(info))

    threads = [threading.Thread(target=report) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window = recorder.data(window_s=900)["window"]
    assert window["judged"] == 8 * per_thread * 2
    assert window["rejected"] == 8 * per_thread
    assert window["finished"] == 8 and window["reward_histogram"]["count"] == 8 * per_thread
    assert recorder.data()["in_flight"] == 0


def test_agrees_with_prometheus_and_stats_on_engine_runs() -> None:
    """Accepted, fallback and refusal answers from the real engine: every count matches."""
    exporter = PrometheusExporter()
    recorder = DashboardRecorder()
    stats = RejectionStats([exporter, recorder])
    scenarios: list[tuple[Any, list[list[str]]]] = [
        (CONFIG, ROUNDS),
        (CONFIG.model_copy(update={"max_attempts": 2}), ROUNDS),  # a fallback segment
        (CONFIG.model_copy(update={"max_attempts": 2, "safety_floor": 0.2}), [["BAD-1", "BAD-2"]]),  # refusal
    ]
    blocks = [
        run_request(STARSEngine(ScriptedBackend(script), KeywordReward(), config), stats, "a prompt")
        for config, script in scenarios
    ]
    assert [block["refused"] for block in blocks] == [False, False, True]

    window = recorder.data(window_s=900)["window"]
    snapshot = stats.snapshot()
    rejected, judged = rejection_from_metrics(exporter.render().decode())
    assert window["judged"] == judged == snapshot["candidates"]["judged"]
    assert window["judged"] == sum(b["candidates_sampled"] for b in blocks)
    assert window["rejected"] == rejected == snapshot["candidates"]["rejected"]
    assert window["rejected"] == sum(b["candidates_rejected"] for b in blocks)
    assert window["rejection_rate"] == pytest.approx(snapshot["rejection_rate"])
    assert window["attempts_histogram"] == snapshot["attempts_per_segment"]["histogram"]
    assert window["requests_by_outcome"] == snapshot["requests"]["by_outcome"]
    assert window["refusals"] == snapshot["refusals"] == 1
    values = metric_values(exporter.render().decode())
    assert values[("stars_attempts_per_segment_count", ())] == window["segments"]
    prom_rewards = sum(value for (name, _), value in values.items() if name == "stars_reward_count")
    assert prom_rewards == window["reward_histogram"]["count"]
