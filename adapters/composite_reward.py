"""`CompositeReward`: a weighted sum of reward scorers, with an optional veto scorer and floor.

Production guards usually combine a helpfulness reward with a safety classifier. A weighted sum
lets a very helpful answer buy back a little unsafety; a veto does not: when the veto scorer puts
an answer under `veto_floor`, its reward is `vetoed_reward` whatever the others say. Pick
`vetoed_reward` under the engine's `safety_floor` and vetoed text is never emitted, not even as a
fallback. The veto scorer's scores are also the `safety` component the engine's veto reads, so
`safety_floor` can be set in the veto scorer's own units. Scorers are called in turn, each with
the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from stars_guard.capabilities import RewardCapabilities
from stars_guard.messages import ChatMessage, as_conversation
from stars_guard.protocols import RewardModel, RewardScores, score_conversation


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

    @property
    def capabilities(self) -> RewardCapabilities:
        """Each scorer's scores as a component by name; with a veto, its scores as `safety` and
        `veto_floor` as the floor `safety_floor='auto'` uses. Without one: no floor, so 'auto'
        means no veto (say so explicitly rather than by a missing attribute)."""
        names = tuple(scorer.name for scorer, _ in self.scorers)
        if self.veto is None:
            return RewardCapabilities(components=names)
        return RewardCapabilities(components=(*names, "safety"), safety_floor=self.veto_floor)

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        return list(self.score_components(conversation, responses).reward)

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        """The weighted sum as the reward; each scorer's scores by name, the veto scorer's as `safety`.

        Scores are not checked here: the engine checks every score it receives, components included.
        """
        turns = as_conversation(conversation)
        totals = [0.0] * len(responses)
        components: dict[str, list[float]] = {}
        for scorer, weight in self.scorers:
            values = list(score_conversation(scorer, turns, responses).reward)
            components[scorer.name] = values
            totals = [total + weight * value for total, value in zip(totals, values, strict=True)]
        if self.veto is None or self.veto_floor is None:
            return RewardScores(totals, components)
        vetoes = list(score_conversation(self.veto, turns, responses).reward)
        components["safety"] = vetoes
        rewards = [
            self.vetoed_reward if safety < self.veto_floor else total
            for total, safety in zip(totals, vetoes, strict=True)
        ]
        return RewardScores(rewards, components)
