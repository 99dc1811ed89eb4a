"""Threshold schedules and the acceptance rule: the pure arithmetic of STARS.

Two threshold modes:
- `absolute` (the paper): r0 = (1-alpha)*R(prompt, "") + alpha*r_thr and
  tau(t) = min(r_thr, r0 + t*(r_thr - r0)/max_new_tokens), t = response tokens including the candidate.
- `relative` (default): tau = the q-quantile of the rewards of the most recent candidates of this
  request (the current round included). It follows the reward model's own scale and drift as the
  answer grows, so it needs no tuning per reward model.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence

from stars_guard.config import STARSConfig


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without numpy."""
    if not values:
        raise ValueError("quantile of an empty sequence")
    return quantile_of_sorted(sorted(values), q)


def quantile_of_sorted(ordered: Sequence[float], q: float) -> float:
    """`quantile` of values already in ascending order (several quantiles of one sort)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    weight = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * weight


def absolute_threshold(
    response_tokens: int, empty_reward: float, reward_threshold: float, alpha: float, max_new_tokens: int
) -> float:
    """The paper's linear ramp from r0 towards r_thr over `max_new_tokens` response tokens."""
    start = (1.0 - alpha) * empty_reward + alpha * reward_threshold
    ramp = start + response_tokens * (reward_threshold - start) / max_new_tokens
    return min(reward_threshold, ramp)


class ThresholdSchedule:
    """Per-request threshold state. Feed each round's rewards, then ask for each candidate's tau."""

    def __init__(self, config: STARSConfig, empty_reward: float | None = None) -> None:
        if config.threshold_mode == "absolute" and empty_reward is None:
            raise ValueError("the absolute schedule needs R(prompt, '') as empty_reward")
        self._config = config
        self._empty_reward = empty_reward
        self._recent: deque[float] = deque(maxlen=config.effective_window)

    @property
    def needs_empty_reward(self) -> bool:
        return self._config.threshold_mode == "absolute"

    def observe(self, rewards: Sequence[float]) -> None:
        """Record the rewards of a freshly scored round (before its candidates are judged)."""
        self._recent.extend(rewards)

    def threshold(self, response_tokens: int) -> float:
        """tau for a candidate that would bring the response to `response_tokens` tokens."""
        config = self._config
        if config.threshold_mode == "absolute":
            assert self._empty_reward is not None and config.reward_threshold is not None
            return absolute_threshold(
                response_tokens,
                self._empty_reward,
                config.reward_threshold,
                config.alpha,
                config.max_new_tokens,
            )
        if not self._recent:
            return -math.inf
        return quantile(list(self._recent), config.quantile_at(response_tokens))


class AcceptanceRule:
    """Hard (R >= tau) or soft (accept with probability min(1, exp((R - tau)/beta)))."""

    def __init__(self, config: STARSConfig, rng: random.Random) -> None:
        self._soft = config.acceptance == "soft"
        self._beta = config.beta
        self._rng = rng

    def accepts(self, reward: float, threshold: float) -> bool:
        if reward >= threshold:
            return True
        if not self._soft:
            return False
        return self._rng.random() < math.exp((reward - threshold) / self._beta)
