"""`PrometheusExporter`: the STARS metrics on a Prometheus registry (a `StatsObserver`).

Fed by `RejectionStats` (from the LangChain handler or the chat service) with each request,
decision and settled segment. No prompt or answer text is ever put in a label.

Metric names and what feeds them:

    stars_segments_total{outcome="accepted|rejected|fallback"}   settled segments; rejected counts
                                                                  rejected candidates as the stats do
    stars_candidates_total                                        judged candidates
    stars_candidates_vetoed_total                                 judged candidates under the safety floor
    stars_attempts_per_segment                                    histogram, per settled segment
    stars_reward{outcome="accepted|rejected"}                     histogram, every judged candidate
    stars_tokens_total{kind="sampled|emitted"}                    per finished request
    stars_requests_total{outcome="stop|length|refusal|time_budget|error|invalid"}
    stars_llm_call_seconds, stars_reward_call_seconds             histograms, from `instrument()`
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stars_guard.protocols import Backend, RewardModel
from stars_guard.telemetry.aggregator import RequestRecord, RunInfo, SegmentOutcome
from stars_guard.telemetry.optional import require
from stars_guard.telemetry.timing import TimedBackend, TimedReward

ATTEMPT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
# Covers GuardReward's [0, 1] finely and raw reward-model logits coarsely.
REWARD_BUCKETS = (-8, -4, -2, -1, -0.5, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 2, 4, 8)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
        prometheus = require("prometheus_client", "PrometheusExporter")
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
