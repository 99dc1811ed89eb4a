"""The judge audit's arithmetic on fixed inputs (no models)."""

from __future__ import annotations

import math

import pytest

from stars_guard.bench.judge_audit import audit


def test_a_judge_that_docks_relevance_shows_a_negative_slope_and_no_gap_at_equal_relevance() -> None:
    relevance_gap = [0.4, 0.2, 0.0, -0.2, 0.3, 0.1]
    baseline_relevance = [0.5] * 6
    relevance = [0.5 + gap for gap in relevance_gap]
    baseline_judge = [0.1, -0.2, 0.3, 0.0, 0.2, -0.1]
    judge = [b - 0.5 * gap for b, gap in zip(baseline_judge, relevance_gap, strict=True)]  # exactly -0.5 per unit
    prompt_judge = [0.0] * 6
    result = audit(judge, baseline_judge, relevance, baseline_relevance, prompt_judge, resamples=200)
    assert result["slope"] == pytest.approx(-0.5)
    assert result["at_equal_relevance"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert result["win_rate"]["mean"] == pytest.approx((0 + 0 + 0.5 + 1 + 0 + 0) / 6)
    assert result["matched_pairs"] == 1 and result["matched_win_rate"]["mean"] == 0.5  # only the zero-gap pair
    assert result["relevance_mean"] == {"method": pytest.approx(0.6333333), "baseline": 0.5}
    assert math.isnan(result["topic_tracking"])  # a constant request score correlates with nothing


def test_a_judge_that_scores_the_topic_tracks_its_score_of_the_request() -> None:
    prompt_judge = [0.9, -0.5, 0.2, -0.1]
    judge = [p + 0.01 for p in prompt_judge]
    baseline_judge = [p - 0.01 for p in prompt_judge]
    result = audit(judge, baseline_judge, [0.7, 0.6, 0.8, 0.5], [0.7, 0.6, 0.8, 0.5], prompt_judge, resamples=100)
    assert result["topic_tracking"] > 0.99
    assert result["win_rate"]["mean"] == 1.0 and result["matched_pairs"] == 4
    assert result["slope"] == 0.0 and result["at_equal_relevance"]["mean"] == pytest.approx(0.02)


def test_unpaired_or_empty_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one per prompt"):
        audit([0.1], [0.2, 0.3], [0.5], [0.5], [0.0])
    with pytest.raises(ValueError, match="non-zero"):
        audit([], [], [], [], [])
