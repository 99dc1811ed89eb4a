"""`CompositeReward`: a weighted sum of reward scorers, with an optional veto scorer and floor.

Production guards usually combine a helpfulness reward with a safety classifier. A weighted sum
lets a very helpful answer buy back a little unsafety; a veto does not: when the veto scorer puts
an answer under `veto_floor`, its reward is `vetoed_reward` whatever the others say. Pick
`vetoed_reward` under the engine's `safety_floor` and vetoed text is never emitted, not even as a
fallback. Scorers are called in turn, each with the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from stars_guard.errors import RewardError
from stars_guard.protocols import RewardModel


class CompositeReward:
    """sum(w_i * scorer_i) over scorers, or `vetoed_reward` where the veto scorer is under `veto_floor`."""

    def __init__(
        self,
        scorers: Sequence[tuple[RewardModel, float]],
        *,
        veto: RewardModel | None = None,
        veto_floor: float | None = None,
        vetoed_reward: float = -1.0,
    ) -> None:
        if not scorers:
            raise ValueError("CompositeReward needs at least one (scorer, weight) pair")
        for scorer, weight in scorers:
            if not math.isfinite(weight):
                raise ValueError(f"weight of {scorer.name!r} must be finite (got {weight})")
        if (veto is None) != (veto_floor is None):
            raise ValueError("pass veto and veto_floor together (or neither)")
        if not math.isfinite(vetoed_reward):
            raise ValueError("vetoed_reward must be finite (the engine's thresholds need real numbers)")
        self.scorers = list(scorers)
        self.veto = veto
        self.veto_floor = veto_floor
        self.vetoed_reward = vetoed_reward

    @property
    def name(self) -> str:
        parts = [f"{weight:g}*{scorer.name}" for scorer, weight in self.scorers]
        veto = f" veto {self.veto.name}<{self.veto_floor:g}" if self.veto is not None else ""
        return "composite(" + " + ".join(parts) + veto + ")"

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        totals = [0.0] * len(responses)
        for scorer, weight in self.scorers:
            values = _checked(scorer, scorer.score(prompt, responses), len(responses))
            totals = [total + weight * value for total, value in zip(totals, values, strict=True)]
        if self.veto is None or self.veto_floor is None:
            return totals
        vetoes = _checked(self.veto, self.veto.score(prompt, responses), len(responses))
        return [
            self.vetoed_reward if safety < self.veto_floor else total
            for total, safety in zip(totals, vetoes, strict=True)
        ]


def _checked(scorer: RewardModel, values: Sequence[float], expected: int) -> list[float]:
    """A scorer's answer, refused when it has the wrong length or a NaN (which the engine reads as 'failed')."""
    floats = [float(value) for value in values]
    if len(floats) != expected:
        raise RewardError(f"scorer {scorer.name!r} returned {len(floats)} scores for {expected} texts")
    if any(math.isnan(value) for value in floats):
        raise RewardError(f"scorer {scorer.name!r} returned NaN")
    return floats
