"""Adaptive round sizes (`segment_budget="adaptive"`): as many candidates per round as pay off.

A round of k candidates costs a fixed part (a forward pass over the prefix, an HTTP round trip, a
reward call) and a part per candidate; in process the fixed part dominates (drafting 4 candidates
from a cached prefix costs about 1.5x drafting one), on a serving engine each candidate costs
nearly a round of its own. Which k is cheapest also depends on how often a candidate passes:
with pass rate p, a round of k settles the segment with probability 1 - (1 - p)^k, so the expected
cost of settling it is

    E(k) = cost(k) / (1 - (1 - p)^k)

`RoundCosts` measures cost(k) = fixed + k * per_candidate on the backend it serves (seconds per
drafted token, drafting and scoring together), across requests; `AdaptiveRounds` tracks p in one
request, weighted to the recent candidates (rejections cluster: a hard stretch of an answer asks
for wider rounds), and picks the k that minimises E(k). The first segment of an answer always
gets the full round (AdaSearch, arXiv 2510.23334: early blocks decide most of the answer), and
no round is wider than the shaped budget would make it. Rounds of the first segment are not timed
(they pay for the prompt's prefill); until two round sizes have been timed, the next rounds probe
one candidate, then a full round.

Round sizes follow measured wall time, so under this rule a seed no longer fixes the answer.

Pure: the standard library only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

_RECENT_WEIGHT = 0.8  # each candidate's pass/fail counts this much less per later candidate
_SMOOTHING = 0.2  # exponential smoothing of the seconds per drafted token at one round size


class RoundCosts:
    """Seconds per drafted token of a round, by round size, for one backend (thread-safe).

    Shared by every request an engine runs, so the cost learnt by one request serves the next.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[int, float] = {}

    def observe(self, candidates: int, tokens: int, seconds: float) -> None:
        """Record a round of `candidates` that drafted `tokens` steps (the segment budget) in `seconds`."""
        if candidates < 1 or tokens < 1 or seconds < 0:
            return
        per_token = seconds / tokens
        with self._lock:
            known = self._seconds.get(candidates)
            self._seconds[candidates] = per_token if known is None else known + _SMOOTHING * (per_token - known)

    def line(self) -> tuple[float, float] | None:
        """(fixed, per candidate) seconds per drafted token, fitted by least squares; None until
        two round sizes have been timed. Both parts are kept non-negative."""
        with self._lock:
            points = sorted(self._seconds.items())
        if len(points) < 2:
            return None
        mean_k = sum(k for k, _ in points) / len(points)
        mean_t = sum(t for _, t in points) / len(points)
        spread = sum((k - mean_k) ** 2 for k, _ in points)
        slope = max(0.0, sum((k - mean_k) * (t - mean_t) for k, t in points) / spread)
        fixed = max(0.0, mean_t - slope * mean_k)
        if fixed == 0.0 and slope == 0.0:
            return None
        return fixed, slope

    def sizes_timed(self) -> Sequence[int]:
        with self._lock:
            return sorted(self._seconds)


class AdaptiveRounds:
    """The round-size rule of one request (module docstring)."""

    def __init__(self, costs: RoundCosts) -> None:
        self.costs = costs
        # A weak prior of one pass in two: the relative threshold is a median of recent rewards.
        self._passed = 1.0
        self._judged = 2.0

    @property
    def pass_rate(self) -> float:
        return self._passed / self._judged

    def observe(self, passes: Sequence[bool]) -> None:
        """Record, for every candidate of a round, whether it would have passed the threshold and veto."""
        for passed in passes:
            self._passed = _RECENT_WEIGHT * self._passed + passed
            self._judged = _RECENT_WEIGHT * self._judged + 1.0

    def size(self, cap: int, first_segment: bool) -> int:
        """Candidates for the next round, at most `cap` (the shaped budget of this segment)."""
        if cap <= 1 or first_segment:
            return max(1, cap)
        line = self.costs.line()
        if line is None:  # time one candidate, then a full round: the two points of the line
            return cap if list(self.costs.sizes_timed()) == [1] else 1
        fixed, per_candidate = line
        p = min(max(self.pass_rate, 1e-3), 1.0 - 1e-9)
        return min(range(1, cap + 1), key=lambda k: (fixed + per_candidate * k) / (1.0 - (1.0 - p) ** k))
