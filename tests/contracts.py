"""Public names the project promises (docs/langchain.md, docs/operations.md), checked by more than one test suite."""

from __future__ import annotations

# Prometheus metric families (without the _total/_bucket/_sum/_count suffixes).
PROMETHEUS_FAMILIES = frozenset(
    {
        "stars_segments",
        "stars_candidates",
        "stars_attempts_per_segment",
        "stars_reward",
        "stars_tokens",
        "stars_requests",
        "stars_llm_call_seconds",
        "stars_reward_call_seconds",
    }
)
