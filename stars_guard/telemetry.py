"""Exporters for STARS statistics: Prometheus metrics and OpenTelemetry spans.

Both are `StatsObserver`s for `RejectionStatsHandler(observers=[...])`: the handler aggregates
decisions from LangChain callbacks and hands each request, decision and settled segment to them.
Their dependencies are optional (`pip install 'stars-guard[telemetry]'`) and imported only when an
exporter is built. No prompt or answer text is ever put in a label or an attribute.

Metric names (DESIGN.md section 4) and what feeds them:

    stars_segments_total{outcome="accepted|rejected|fallback"}   settled segments; rejected counts
                                                                  rejected candidates as the stats do
    stars_candidates_total                                        judged candidates
    stars_candidates_vetoed_total                                 judged candidates under the safety floor
    stars_attempts_per_segment                                    histogram, per settled segment
    stars_reward{outcome="accepted|rejected"}                     histogram, every judged candidate
    stars_tokens_total{kind="sampled|emitted"}                    per finished request
    stars_requests_total{outcome="stop|length|refusal|time_budget|error"}
    stars_llm_call_seconds, stars_reward_call_seconds             histograms, from `instrument()`
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

from stars_guard.callbacks import RequestRecord, RunInfo, SegmentOutcome
from stars_guard.messages import ChatMessage
from stars_guard.protocols import (
    Backend,
    Candidate,
    Generation,
    GenerationWrapper,
    RewardModel,
    RewardScores,
    RewardWrapper,
)

TELEMETRY_HINT = "pip install 'stars-guard[telemetry]'"
ATTEMPT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
# Covers GuardReward's [0, 1] finely and raw reward-model logits coarsely.
REWARD_BUCKETS = (-8, -4, -2, -1, -0.5, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 2, 4, 8)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says what to install."""


def _require(module: str, purpose: str) -> Any:
    from importlib import import_module

    try:
        return import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"{purpose} needs the {module.split('.')[0]} package: {TELEMETRY_HINT}") from exc


# Prometheus --------------------------------------------------------------------------------------


class PrometheusExporter:
    """The STARS metrics on a Prometheus registry (its own by default, so several never collide).

    Serve them with `render()` (e.g. from a `/metrics` route) or
    `prometheus_client.start_http_server(port, registry=exporter.registry)`.
    """

    def __init__(
        self,
        registry: Any = None,
        *,
        reward_buckets: Sequence[float] = REWARD_BUCKETS,
        attempt_buckets: Sequence[float] = ATTEMPT_BUCKETS,
        call_buckets: Sequence[float] = CALL_BUCKETS,
    ) -> None:
        prometheus = _require("prometheus_client", "PrometheusExporter")
        self.registry = registry if registry is not None else prometheus.CollectorRegistry()
        self._content_type = prometheus.CONTENT_TYPE_LATEST
        self._generate_latest = prometheus.generate_latest
        counter, histogram = prometheus.Counter, prometheus.Histogram
        on = {"registry": self.registry}
        self.segments = counter(
            "stars_segments_total", "STARS segment outcomes (rejected: rejected candidates).", ["outcome"], **on
        )
        self.candidates = counter("stars_candidates_total", "Candidate segments judged by the reward model.", **on)
        self.vetoed = counter(
            "stars_candidates_vetoed_total", "Judged candidates under the safety floor: never emitted.", **on
        )
        self.attempts = histogram(
            "stars_attempts_per_segment", "Candidates judged per settled segment.", buckets=attempt_buckets, **on
        )
        self.reward = histogram(
            "stars_reward", "Reward of each judged candidate.", ["outcome"], buckets=reward_buckets, **on
        )
        self.tokens = counter("stars_tokens_total", "Tokens sampled by the LLM and emitted in answers.", ["kind"], **on)
        self.requests = counter("stars_requests_total", "Finished STARS requests by outcome.", ["outcome"], **on)
        self.llm_seconds = histogram(
            "stars_llm_call_seconds", "Duration of one drafting call to the LLM backend.", buckets=call_buckets, **on
        )
        self.reward_seconds = histogram(
            "stars_reward_call_seconds", "Duration of one reward-model call.", buckets=call_buckets, **on
        )
        # Pre-create the documented label values so a fresh exporter already shows every series.
        for outcome in ("accepted", "rejected", "fallback"):
            self.segments.labels(outcome=outcome)
        for outcome in ("accepted", "rejected"):
            self.reward.labels(outcome=outcome)
        for kind in ("sampled", "emitted"):
            self.tokens.labels(kind=kind)

    # StatsObserver ------------------------------------------------------------------------------

    def request_started(self, run: RunInfo) -> None:
        """Nothing to count until the request ends."""

    def decision(self, run: RunInfo, decision: Mapping[str, Any]) -> None:
        if decision.get("vetoed"):
            self.vetoed.inc()
        reward = decision.get("reward")
        if reward is not None and not decision.get("fallback"):
            self.reward.labels(outcome="accepted" if decision.get("accepted") else "rejected").observe(float(reward))

    def segment_settled(self, run: RunInfo, segment: SegmentOutcome) -> None:
        self.candidates.inc(segment.attempts)
        self.attempts.observe(segment.attempts)
        if segment.rejected:
            self.segments.labels(outcome="rejected").inc(segment.rejected)
        if segment.outcome in ("accepted", "fallback"):
            self.segments.labels(outcome=segment.outcome).inc()

    def request_finished(self, run: RunInfo, record: RequestRecord) -> None:
        self.requests.labels(outcome=record.finish_reason).inc()
        self.tokens.labels(kind="sampled").inc(int(record.stats.get("tokens_sampled") or 0))
        self.tokens.labels(kind="emitted").inc(int(record.stats.get("tokens_emitted") or 0))

    def request_failed(self, run: RunInfo, error: BaseException) -> None:
        self.requests.labels(outcome="error").inc()

    # Call timing ----------------------------------------------------------------------------------

    def instrument(self, backend: Backend, reward: RewardModel) -> tuple[Backend, RewardModel]:
        """Wrap a backend and reward model so each call feeds the call-duration histograms."""
        return TimedBackend(backend, self.llm_seconds.observe), TimedReward(reward, self.reward_seconds.observe)

    def instrument_model(self, llm: Any) -> Any:
        """A copy of a `STARSChatModel` whose backend and reward calls are timed."""
        backend, reward = self.instrument(*llm.resolved_components())
        return llm.model_copy(update={"backend": backend, "reward": reward})

    # Output -------------------------------------------------------------------------------------

    @property
    def content_type(self) -> str:
        return str(self._content_type)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return bytes(self._generate_latest(self.registry))


class TimedBackend:
    """A `Backend` that reports how long each drafting call takes (prompt prefill not included)."""

    def __init__(self, inner: Backend, observe: Callable[[float], None]) -> None:
        self.inner = inner
        self._observe = observe

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def open(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> Generation:
        generation = self.inner.open(
            messages, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        return _TimedGeneration(generation, self._observe)

    def __getattr__(self, name: str) -> Any:  # tokenizer, context_window, ... of the wrapped backend
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class _TimedGeneration(GenerationWrapper):
    def __init__(self, inner: Generation, observe: Callable[[float], None]) -> None:
        super().__init__(inner)
        self._observe = observe

    def draft(self, num_candidates: int, max_tokens: int, **options: Any) -> list[Candidate]:
        """Timed draft; `options` (e.g. `entropy_cut`) pass through to backends that take them."""
        started = time.perf_counter()
        try:
            return super().draft(num_candidates, max_tokens, **options)
        finally:
            _safely(self._observe, time.perf_counter() - started)


class TimedReward(RewardWrapper):
    """A `RewardModel` that reports how long each scoring call takes."""

    def __init__(self, inner: RewardModel, observe: Callable[[float], None]) -> None:
        super().__init__(inner)
        self._observe = observe

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        started = time.perf_counter()
        try:
            return super().score_components(conversation, responses)
        finally:
            _safely(self._observe, time.perf_counter() - started)


def _safely(observe: Callable[[float], None], seconds: float) -> None:
    with contextlib.suppress(Exception):  # a metrics failure must not fail generation
        observe(seconds)


# OpenTelemetry -----------------------------------------------------------------------------------


class OpenTelemetryExporter:
    """A span per STARS request and a `gen_ai.evaluation.result` event per judged candidate.

    Uses `opentelemetry-api` only: spans go to whatever tracer provider the application set up
    (without an SDK they are no-ops). Span attributes follow the GenAI semantic conventions
    (`gen_ai.*`) plus the per-response statistics as `stars.*`.
    """

    def __init__(self, tracer: Any = None, tracer_provider: Any = None) -> None:
        trace = _require("opentelemetry.trace", "OpenTelemetryExporter")
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
        if isinstance(stats.get("tokens_emitted"), int):
            attributes["gen_ai.usage.output_tokens"] = stats["tokens_emitted"]
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
