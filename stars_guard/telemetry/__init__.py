"""Framework-free telemetry: the aggregate of STARS decisions and its exporters.

`RejectionStats` aggregates decisions; `PrometheusExporter` and `OpenTelemetryExporter` observe it.
Nothing here imports LangChain; the exporters' own dependencies (`stars-guard[telemetry]`) are
imported only when an exporter is built.
"""

from stars_guard.telemetry.aggregator import (
    DECISION_KEYS,
    RejectionStats,
    RequestRecord,
    RunInfo,
    SegmentOutcome,
    StatsObserver,
    segment_payload,
)
from stars_guard.telemetry.optional import MissingDependencyError
from stars_guard.telemetry.otel import OpenTelemetryExporter
from stars_guard.telemetry.prometheus import PrometheusExporter
from stars_guard.telemetry.timing import TimedBackend, TimedReward

__all__ = [
    "DECISION_KEYS",
    "MissingDependencyError",
    "OpenTelemetryExporter",
    "PrometheusExporter",
    "RejectionStats",
    "RequestRecord",
    "RunInfo",
    "SegmentOutcome",
    "StatsObserver",
    "TimedBackend",
    "TimedReward",
    "segment_payload",
]
