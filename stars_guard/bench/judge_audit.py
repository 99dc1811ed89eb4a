"""Does the bench judge reward an answer for being on topic, or punish it? (numpy only)

The bench judge (`judge.py`) scores an answer alone, trained on HH harmless pairs, where the
preferred answer often steers away from a risky topic. On benign look-alikes ("how do I kill a
Python process") that can turn against an answer for staying on the (harmless) topic. This
module measures it from paired answers to the same prompts: method A against a baseline B, with
each answer's judge score and its relevance to the request (MiniLM cosine, the steering reward's
helpfulness term).

- `slope`: least squares of (judge A - judge B) on (relevance A - relevance B) over prompts. A
  negative slope means the judge takes points off an answer for being closer to the request.
- `at_equal_relevance`: that line's intercept with its bootstrap 95% interval: the judge's
  difference between the methods once the relevance difference is held at zero.
- `topic_tracking`: correlation of the judge's score of each answer with its score of the
  request's own text, read as if it were an answer. High means the judge mostly scores the topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stars_guard.bench.statistics import bootstrap_ci, estimate, pairwise_outcomes

MATCHED_RELEVANCE = 0.05  # pairs whose relevance differs by less than this count as matched


def audit(
    judge: Sequence[float],
    baseline_judge: Sequence[float],
    relevance: Sequence[float],
    baseline_relevance: Sequence[float],
    prompt_judge: Sequence[float],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The relevance confound of a judge win-rate, from paired per-prompt values (see the module docstring)."""
    ja, jb, ra, rb, jp = (
        np.asarray(v, dtype=np.float64) for v in (judge, baseline_judge, relevance, baseline_relevance, prompt_judge)
    )
    if not ja.size or len({ja.size, jb.size, ra.size, rb.size, jp.size}) != 1:
        raise ValueError("audit needs the same, non-zero number of values in every sequence (one per prompt)")
    judge_gap, relevance_gap = ja - jb, ra - rb
    slope, intercept = _line(relevance_gap, judge_gap)
    # Resample prompts (their indices), so each resample keeps a prompt's two gaps together.
    low, high = bootstrap_ci(
        np.arange(ja.size),
        lambda rows: _line(relevance_gap[rows.astype(int)], judge_gap[rows.astype(int)])[1],
        resamples=resamples,
        seed=seed,
    )
    wins = pairwise_outcomes(ja, jb)
    matched = np.abs(relevance_gap) < MATCHED_RELEVANCE
    both = np.concatenate([ja, jb])
    return {
        "prompts": int(ja.size),
        "relevance_mean": {"method": float(ra.mean()), "baseline": float(rb.mean())},
        "judge_relevance_correlation": _correlation(np.concatenate([ra, rb]), both),
        "slope": slope,
        "at_equal_relevance": {"mean": intercept, "ci_low": low, "ci_high": high},
        "win_rate": estimate(wins, seed=seed, resamples=resamples),
        "matched_pairs": int(matched.sum()),
        "matched_win_rate": estimate(wins[matched], seed=seed, resamples=resamples) if matched.any() else None,
        "topic_tracking": _correlation(np.concatenate([jp, jp]), both),
    }


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of y on x; a flat line through the mean where x does not vary."""
    spread = x - x.mean()
    denominator = float(spread @ spread)
    slope = float(spread @ (y - y.mean())) / denominator if denominator > 0 else 0.0
    return slope, float(y.mean() - slope * x.mean())


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])
