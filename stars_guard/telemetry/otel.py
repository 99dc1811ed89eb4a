"""`OpenTelemetryExporter`: a span per STARS request (a `StatsObserver`), opentelemetry-api only."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from stars_guard.telemetry.aggregator import RequestRecord, RunInfo, SegmentOutcome
from stars_guard.telemetry.optional import require


class OpenTelemetryExporter:
    """A span per STARS request and a `gen_ai.evaluation.result` event per judged candidate.

    Uses `opentelemetry-api` only: spans go to whatever tracer provider the application set up
    (without an SDK they are no-ops). Span attributes follow the GenAI semantic conventions
    (`gen_ai.*`) plus the per-response statistics as `stars.*`.
    """

    def __init__(self, tracer: Any = None, tracer_provider: Any = None) -> None:
        trace = require("opentelemetry.trace", "OpenTelemetryExporter")
        from stars_guard import __version__

        self._trace = trace
        self._tracer = tracer or trace.get_tracer("stars_guard", __version__, tracer_provider=tracer_provider)
        self._spans: dict[UUID, Any] = {}
        self._lock = threading.Lock()

    def request_started(self, run: RunInfo) -> None:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "stars_guard",
            "gen_ai.request.model": run.model_name,
        }
        if run.temperature is not None:
            attributes["gen_ai.request.temperature"] = run.temperature
        if run.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = run.max_tokens
        span = self._tracer.start_span(
            f"chat {run.model_name}", kind=self._trace.SpanKind.CLIENT, attributes=attributes
        )
        with self._lock:
            self._spans[run.run_id] = span

    def decision(self, run: RunInfo, decision: Mapping[str, Any]) -> None:
        span = self._span(run.run_id)
        if span is None:
            return
        label = "fallback" if decision.get("fallback") else ("accepted" if decision.get("accepted") else "rejected")
        attributes: dict[str, Any] = {
            "gen_ai.evaluation.name": "stars.segment",
            "gen_ai.evaluation.score.label": label,
            "stars.segment_index": int(decision["segment_index"]),
            "stars.attempt": int(decision["attempt"]),
            "stars.tokens": int(decision["tokens"]),
        }
        for key, name in (("reward", "gen_ai.evaluation.score.value"), ("threshold", "stars.threshold")):
            value = decision.get(key)
            if value is not None and math.isfinite(float(value)):
                attributes[name] = float(value)
        span.add_event("gen_ai.evaluation.result", attributes=attributes)

    def segment_settled(self, run: RunInfo, segment: SegmentOutcome) -> None:
        """Segments are visible through their decisions' events."""

    def request_finished(self, run: RunInfo, record: RequestRecord) -> None:
        span = self._pop(run.run_id)
        if span is None:
            return
        attributes: dict[str, Any] = {
            "gen_ai.response.model": record.model_name,
            "gen_ai.response.finish_reasons": [record.finish_reason],
            "gen_ai.response.id": str(record.run_id),
        }
        stats = record.stats
        if isinstance(stats.get("prompt_tokens"), int):
            attributes["gen_ai.usage.input_tokens"] = stats["prompt_tokens"]
        # Every token sampled, as LangChain's usage counts them: cost views then see the candidates
        # STARS threw away too (`stars.tokens_emitted` is the answer's own length).
        counts = [stats.get(key) for key in ("tokens_sampled", "tokens_emitted")]
        if any(isinstance(count, int) for count in counts):
            attributes["gen_ai.usage.output_tokens"] = max(count for count in counts if isinstance(count, int))
        for key, value in stats.items():
            if isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
                attributes[f"stars.{key}"] = value
        attributes["stars.latency_s"] = record.latency_s
        span.set_attributes(attributes)
        span.end()

    def request_failed(self, run: RunInfo, error: BaseException) -> None:
        span = self._pop(run.run_id)
        if span is None:
            return
        span.record_exception(error)
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(error)[:200]))
        span.end()

    def _span(self, run_id: UUID) -> Any:
        with self._lock:
            return self._spans.get(run_id)

    def _pop(self, run_id: UUID) -> Any:
        with self._lock:
            return self._spans.pop(run_id, None)
