"""Win-rate arithmetic and bootstrap intervals on fixed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from stars_guard.bench.statistics import auroc, bootstrap_ci, estimate, pairwise_outcomes, win_rate


def test_ties_count_half_and_losses_zero() -> None:
    outcomes = pairwise_outcomes([0.9, 0.5, 0.1, 0.7], [0.1, 0.5, 0.2, 0.7])
    assert outcomes.tolist() == [1.0, 0.5, 0.0, 0.5]
    assert win_rate([0.9, 0.5, 0.1, 0.7], [0.1, 0.5, 0.2, 0.7]) == pytest.approx(0.5)
    assert win_rate([3, 3, 3], [1, 2, 4]) == pytest.approx(2 / 3)


def test_a_method_against_itself_wins_exactly_half() -> None:
    scores = [0.3, -1.2, 4.0]
    assert win_rate(scores, scores) == 0.5


def test_paired_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="same length"):
        pairwise_outcomes([1.0, 2.0], [1.0])


def test_bootstrap_interval_of_a_constant_is_that_constant() -> None:
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)


def test_bootstrap_interval_matches_hand_computed_percentiles() -> None:
    values = np.array([0.0, 1.0, 1.0, 1.0])
    rng = np.random.default_rng(7)
    picks = rng.integers(0, 4, size=(500, 4))
    means = values[picks].mean(axis=1)
    expected = tuple(np.quantile(means, [0.025, 0.975]))
    assert bootstrap_ci(values, resamples=500, seed=7) == pytest.approx(expected)


def test_bootstrap_interval_brackets_the_mean_and_is_deterministic() -> None:
    values = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1] * 3
    low, high = bootstrap_ci(values, seed=3)
    assert low < np.mean(values) < high
    assert (low, high) == bootstrap_ci(values, seed=3)
    # A 70% win-rate over 30 prompts: the normal-approximation 95% half-width is about 0.16.
    assert 0.10 < (high - low) / 2 < 0.22
    assert estimate(values, seed=3) == {"mean": pytest.approx(0.7), "ci_low": low, "ci_high": high}


def test_empty_input_gives_nan_interval() -> None:
    low, high = bootstrap_ci([])
    assert np.isnan(low) and np.isnan(high)


def test_auroc_counts_pairs_ranked_right_with_ties_half() -> None:
    assert auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.5, 0.5, 0.7, 0.2], [True, False, True, False]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert np.isnan(auroc([0.5], [True]))
