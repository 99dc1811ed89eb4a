"""Paired comparisons and bootstrap intervals for the harness (numpy only, seeded: reruns agree)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def pairwise_outcomes(scores: Sequence[float], baseline: Sequence[float], tie_tol: float = 1e-9) -> np.ndarray:
    """Per prompt: 1 where `scores` beats `baseline`, 0.5 on a tie, 0 on a loss.

    Ties count half so identical answers (the same text scored twice) do not move a win-rate off 50%.
    """
    a = np.asarray(scores, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same length (got {a.shape} and {b.shape})")
    return np.where(np.abs(a - b) <= tie_tol, 0.5, (a > b).astype(np.float64))


def win_rate(scores: Sequence[float], baseline: Sequence[float]) -> float:
    """Share of prompts where `scores` wins, ties counted half."""
    outcomes = pairwise_outcomes(scores, baseline)
    return float(outcomes.mean()) if outcomes.size else float("nan")


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over prompts (resampled with replacement)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))
    stats = np.array([statistic(data[row]) for row in picks])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return (float(low), float(high))


def estimate(values: Sequence[float], *, seed: int = 0, resamples: int = 2000) -> dict[str, float]:
    """{"mean", "ci_low", "ci_high"}: a mean over prompts with its bootstrap 95% interval."""
    data = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(data, seed=seed, resamples=resamples)
    return {"mean": float(data.mean()) if data.size else float("nan"), "ci_low": low, "ci_high": high}


def format_estimate(value: dict[str, float]) -> str:
    """An `estimate` as text: "mean [ci_low, ci_high]" to three decimals."""
    return f"{value['mean']:.3f} [{value['ci_low']:.3f}, {value['ci_high']:.3f}]"


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve: P(a random positive scores above a random negative), ties half."""
    values = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels, dtype=bool)
    pos, neg = values[positive], values[~positive]
    if not pos.size or not neg.size:
        return float("nan")
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (pos.size * neg.size))
