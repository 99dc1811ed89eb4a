"""Prometheus and OpenTelemetry exporters, fed by RejectionStatsHandler on a scripted backend."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry import trace
from prometheus_client.parser import text_string_to_metric_families

from stars_guard.langchain.callbacks import RejectionStatsHandler
from stars_guard.langchain.chat_model import STARSChatModel
from stars_guard.telemetry import MissingDependencyError, OpenTelemetryExporter, PrometheusExporter
from tests.contracts import PROMETHEUS_FAMILIES
from tests.doubles import CONFIG, EOS, ROUNDS, KeywordReward
from tests.doubles import SeededBackend as ScriptedBackend
from tests.langchain.test_callbacks_unit import Broken

PROMPT = "a secret prompt that must never reach a label"


def run_requests(handler: RejectionStatsHandler, wrap: Any = None) -> list[dict[str, Any]]:
    """Three answers (accepted, fallback, refusal) and one failure; returns the answers' stats."""
    configs = [CONFIG, CONFIG.model_copy(update={"max_attempts": 2})]
    scripts: list[Any] = [ROUNDS, ROUNDS]
    configs.append(CONFIG.model_copy(update={"max_attempts": 2, "safety_floor": 0.2}))
    scripts.append([["BAD-1", "BAD-2"]])
    stats = []
    for config, script in zip(configs, scripts, strict=True):
        llm = STARSChatModel(backend=ScriptedBackend(script), reward=KeywordReward(), config=config)
        llm = wrap(llm) if wrap else llm
        chunks = list(llm.stream(PROMPT, config={"callbacks": [handler]}))
        stats.append(chunks[-1].response_metadata["stars"])
    broken = STARSChatModel(backend=Broken([[f"x{EOS}"]]), reward=KeywordReward(), config=CONFIG)
    with pytest.raises(ConnectionError):
        broken.invoke(PROMPT, config={"callbacks": [handler]})
    return stats


def samples(exporter: PrometheusExporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exporter.render().decode()
    assert PROMPT not in text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_prometheus_output_parses_and_carries_the_documented_names() -> None:
    exporter = PrometheusExporter()
    handler = RejectionStatsHandler(observers=[exporter])
    stats = run_requests(handler, wrap=exporter.instrument_model)
    values = samples(exporter)
    families = {family.name: family for family in text_string_to_metric_families(exporter.render().decode())}
    assert set(families) >= PROMETHEUS_FAMILIES
    assert families["stars_attempts_per_segment"].type == "histogram"
    assert families["stars_segments"].type == "counter"

    total = {key: sum(int(s[key]) for s in stats) for key in stats[0] if isinstance(stats[0][key], int)}
    assert values[("stars_segments_total", (("outcome", "accepted"),))] == total["segments_accepted"]
    assert values[("stars_segments_total", (("outcome", "rejected"),))] == total["candidates_rejected"]
    assert values[("stars_segments_total", (("outcome", "fallback"),))] == total["segments_fallback"]
    assert values[("stars_candidates_total", ())] == total["candidates_sampled"]
    assert values[("stars_candidates_vetoed_total", ())] == total["candidates_vetoed"] == 2  # the refusal's two
    assert values[("stars_tokens_total", (("kind", "sampled"),))] == total["tokens_sampled"]
    assert values[("stars_tokens_total", (("kind", "emitted"),))] == total["tokens_emitted"]
    for outcome, count in {"stop": 2, "refusal": 1, "error": 1}.items():
        assert values[("stars_requests_total", (("outcome", outcome),))] == count
    # One observation per drafting / scoring call of the instrumented models.
    assert values[("stars_llm_call_seconds_count", ())] == total["llm_calls"]
    assert values[("stars_reward_call_seconds_count", ())] == total["reward_calls"]
    snapshot = handler.snapshot()
    assert values[("stars_attempts_per_segment_count", ())] == snapshot["attempts_per_segment"]["count"]
    judged_rewards = sum(values[("stars_reward_count", (("outcome", o),))] for o in ("accepted", "rejected"))
    assert judged_rewards == total["candidates_sampled"]


def test_a_fresh_exporter_shows_every_documented_series_at_zero() -> None:
    values = samples(PrometheusExporter())
    for outcome in ("accepted", "rejected", "fallback"):
        assert values[("stars_segments_total", (("outcome", outcome),))] == 0
    for kind in ("sampled", "emitted"):
        assert values[("stars_tokens_total", (("kind", kind),))] == 0


# OpenTelemetry: a minimal recording tracer written against the API (the SDK is not a dependency).


class RecordingSpan(trace.Span):
    def __init__(self, name: str, attributes: dict[str, Any], kind: trace.SpanKind) -> None:
        self.name, self.attributes, self.kind = name, dict(attributes), kind
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.status: trace.Status | None = None
        self.exceptions: list[BaseException] = []
        self.ended = False

    def end(self, end_time: int | None = None) -> None:
        self.ended = True

    def get_span_context(self) -> trace.SpanContext:
        return trace.INVALID_SPAN_CONTEXT

    def set_attributes(self, attributes: Any) -> None:
        self.attributes.update(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        self.events.append((name, dict(attributes or {})))

    def update_name(self, name: str) -> None:
        self.name = name

    def is_recording(self) -> bool:
        return not self.ended

    def set_status(self, status: Any, description: str | None = None) -> None:
        self.status = status

    def record_exception(self, exception: BaseException, *args: Any, **kwargs: Any) -> None:
        self.exceptions.append(exception)


class RecordingTracer(trace.Tracer):
    def __init__(self) -> None:
        self.spans: list[RecordingSpan] = []

    def start_span(self, name: str, context: Any = None, kind: Any = trace.SpanKind.INTERNAL, **kwargs: Any) -> Any:
        span = RecordingSpan(name, kwargs.get("attributes") or {}, kind)
        self.spans.append(span)
        return span

    @contextmanager
    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
        yield self.start_span(name, **kwargs)


def test_opentelemetry_span_per_request_with_an_evaluation_event_per_decision() -> None:
    tracer = RecordingTracer()
    handler = RejectionStatsHandler(observers=[OpenTelemetryExporter(tracer=tracer)])
    llm = STARSChatModel(
        backend=ScriptedBackend(ROUNDS), reward=KeywordReward(), config=CONFIG, temperature=0.5, max_tokens=50
    )
    message = llm.invoke(PROMPT, config={"callbacks": [handler]})
    (span,) = tracer.spans
    assert span.ended and span.name == "chat scripted-lm" and span.kind == trace.SpanKind.CLIENT
    attributes = span.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "scripted-lm"
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["gen_ai.usage.input_tokens"] == message.usage_metadata["input_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == message.usage_metadata["output_tokens"]
    stars = message.response_metadata["stars"]
    for key in ("candidates_sampled", "candidates_rejected", "segments_accepted", "rejection_rate", "refused"):
        assert attributes[f"stars.{key}"] == stars[key]
    assert [name for name, _ in span.events] == ["gen_ai.evaluation.result"] * 5
    labels = [event["gen_ai.evaluation.score.label"] for _, event in span.events]
    assert labels == ["rejected", "accepted", "rejected", "rejected", "accepted"]
    assert [event["gen_ai.evaluation.score.value"] for _, event in span.events] == [0.0, 1.0, 0.0, 0.0, 1.0]
    assert PROMPT not in repr(span.attributes) + repr(span.events)


def test_opentelemetry_marks_failed_requests() -> None:
    tracer = RecordingTracer()
    handler = RejectionStatsHandler(observers=[OpenTelemetryExporter(tracer=tracer)])
    broken = STARSChatModel(backend=Broken([[f"x{EOS}"]]), reward=KeywordReward(), config=CONFIG)
    with pytest.raises(ConnectionError):
        broken.invoke("hi", config={"callbacks": [handler]})
    (span,) = tracer.spans
    assert span.ended
    assert span.status is not None and span.status.status_code == trace.StatusCode.ERROR
    assert span.attributes["error.type"] == "ConnectionError"
    assert isinstance(span.exceptions[0], ConnectionError)


@pytest.mark.parametrize(
    ("module", "build"),
    [("prometheus_client", PrometheusExporter), ("opentelemetry.trace", OpenTelemetryExporter)],
)
def test_missing_optional_dependencies_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, build: Any
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'stars-guard\[telemetry\]'"):
        build()
