"""Threshold arithmetic and the acceptance rule."""

from __future__ import annotations

import math
import random

import pytest

from stars_guard import STARSConfig
from stars_guard.policy import AcceptanceRule, ThresholdSchedule, absolute_threshold, quantile


def test_absolute_schedule_matches_the_paper_formula():
    # r0 = (1 - 0.25) * 0.2 + 0.25 * 1.0 = 0.4; tau(t) = min(1.0, 0.4 + t * 0.6 / 100)
    assert absolute_threshold(0, 0.2, 1.0, 0.25, 100) == pytest.approx(0.4)
    assert absolute_threshold(50, 0.2, 1.0, 0.25, 100) == pytest.approx(0.7)
    assert absolute_threshold(100, 0.2, 1.0, 0.25, 100) == pytest.approx(1.0)
    assert absolute_threshold(150, 0.2, 1.0, 0.25, 100) == pytest.approx(1.0)  # capped at r_thr


def test_absolute_schedule_object_uses_response_tokens():
    config = STARSConfig(threshold_mode="absolute", reward_threshold=8.5, alpha=0.5, max_new_tokens=64)
    schedule = ThresholdSchedule(config, empty_reward=2.5)
    start = 0.5 * 2.5 + 0.5 * 8.5
    assert schedule.threshold(0) == pytest.approx(start)
    assert schedule.threshold(32) == pytest.approx(start + 32 * (8.5 - start) / 64)
    with pytest.raises(ValueError):
        ThresholdSchedule(config)


def test_quantile_matches_linear_interpolation():
    assert quantile([3.0, 1.0, 2.0, 4.0], 0.5) == pytest.approx(2.5)
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.75) == pytest.approx(4.0)
    assert quantile([7.0], 0.3) == 7.0
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_relative_schedule_follows_a_window_of_recent_rewards():
    config = STARSConfig(relative_quantile=0.5, relative_window=4)
    schedule = ThresholdSchedule(config)
    assert schedule.threshold(10) == -math.inf  # nothing seen yet
    schedule.observe([1.0, 2.0])
    assert schedule.threshold(10) == pytest.approx(1.5)
    schedule.observe([10.0, 20.0, 30.0])  # window keeps 2.0, 10, 20, 30
    assert schedule.threshold(10) == pytest.approx(15.0)


def test_relative_schedule_is_scale_free():
    config = STARSConfig(relative_quantile=0.6)
    rewards = [0.1, 0.4, 0.35, 0.8]
    small, large = ThresholdSchedule(config), ThresholdSchedule(config)
    small.observe(rewards)
    large.observe([100 * r - 7 for r in rewards])
    assert large.threshold(0) == pytest.approx(100 * small.threshold(0) - 7)


def test_hard_acceptance_is_a_plain_comparison():
    rule = AcceptanceRule(STARSConfig(acceptance="hard"), random.Random(0))
    assert rule.accepts(0.5, 0.5) and not rule.accepts(0.49, 0.5)


def test_soft_acceptance_rate_matches_exp_formula_under_a_seed():
    beta, gap = 0.1, -0.05
    rule = AcceptanceRule(STARSConfig(acceptance="soft", beta=beta), random.Random(1234))
    trials = 20000
    rate = sum(rule.accepts(0.5 + gap, 0.5) for _ in range(trials)) / trials
    expected = math.exp(gap / beta)  # 0.6065
    assert rate == pytest.approx(expected, abs=0.015)


def test_soft_acceptance_is_reproducible_under_a_seed():
    def decisions(seed: int) -> list[bool]:
        rule = AcceptanceRule(STARSConfig(acceptance="soft", beta=0.1), random.Random(seed))
        return [rule.accepts(0.45, 0.5) for _ in range(200)]

    assert decisions(7) == decisions(7)
    assert decisions(7) != decisions(8)


def test_soft_acceptance_always_accepts_at_or_above_threshold():
    rule = AcceptanceRule(STARSConfig(acceptance="soft", beta=0.01), random.Random(0))
    assert all(rule.accepts(0.7, 0.7) for _ in range(100))
