"""The methods the harness compares, each behind one `run(prompt, seed)` call.

`vanilla`, `stars*` and `cards*` go through `STARSEngine` (vanilla = `STARSConfig.plain_sampling`,
cards = `segmentation="entropy"`), so their accounting is the engine's own. Best-of-N is not an
engine mode: `BestOfN` drafts N whole answers from the prompt through the backend, in batches,
scores each final answer once with the steering reward and keeps the best.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stars_guard.config import STARSConfig
from stars_guard.engine import STARSEngine
from stars_guard.messages import ChatMessage, normalize_messages
from stars_guard.protocols import Backend, OpenRequest, RewardModel
from stars_guard.round_sizing import RoundCosts
from stars_guard.stats import STARSStats

DEFAULT_METHODS: tuple[str, ...] = (
    "vanilla",
    "bon-4",
    "bon-8",
    "bon-16",
    "stars",
    "stars-L16",
    "stars-L32",
    "stars-K2",
    "stars-K8",
    "stars-q0.75",
    "stars-flat",
    "stars-first",
    "stars-first-flat-L16",
    "cards",
)

_STARS_KEYS = {"L": ("segment_size", int), "K": ("candidates_per_round", int), "q": ("relative_quantile", float)}
# Named switches: `first` (paper's index-order acceptance), `best`, and `flat` (K drafts for every
# segment: no per-segment budget). `stars-first-flat` is the engine default before issue 5.
_FLAGS: dict[str, dict[str, Any]] = {
    "first": {"round_selection": "first"},
    "best": {"round_selection": "best"},
    "flat": {"segment_budget": "flat", "segment_candidates": None, "final_candidates": None},
    "noveto": {"safety_floor": None},
    "adaptive": {"segment_budget": "adaptive"},
}
_CARDS_KEYS = {"L": ("segment_size", int), "K": ("candidates_per_round", int), "e": ("entropy_threshold", float)}


@dataclass
class Outcome:
    """One method's answer to one prompt, with its cost."""

    text: str
    stats: STARSStats
    wall_s: float


@dataclass
class Method:
    """A named method: `family` and `sweep` place it on the reward-vs-cost plot."""

    name: str
    family: str
    sweep: dict[str, float] = field(default_factory=dict)
    config: STARSConfig | None = None
    best_of: int | None = None
    batch_size: int = 8
    round_costs: RoundCosts = field(default_factory=RoundCosts, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"name": self.name, "family": self.family, "sweep": self.sweep}
        if self.best_of is not None:
            described["best_of"] = self.best_of
            described["batch_size"] = min(self.batch_size, self.best_of)
        if self.config is not None:
            base = STARSConfig()
            described["config_changes"] = {
                key: value for key, value in self.config.model_dump().items() if value != getattr(base, key)
            }
        return described

    def run(
        self,
        backend: Backend,
        reward: RewardModel,
        prompt: str | Sequence[ChatMessage],
        seed: int,
        *,
        stop: Sequence[str] = (),
    ) -> Outcome:
        """Answer `prompt` (a request, or a whole conversation) with this method; `stop` as a client's."""
        started = time.perf_counter()
        if self.best_of is not None:
            assert self.config is not None
            if stop:
                raise ValueError(f"{self.name} drafts whole answers and takes no stop strings")
            stats, text = best_of_n(backend, reward, prompt, self.best_of, self.batch_size, self.config, seed)
        else:
            assert self.config is not None
            engine = STARSEngine(backend, reward, self.config, self.round_costs)
            result = engine.run(prompt, seed=seed, stop=list(stop) or None)
            stats, text = result.stats, result.text
        return Outcome(text, stats, time.perf_counter() - started)


def best_of_n(
    backend: Backend,
    reward: RewardModel,
    prompt: str | Sequence[ChatMessage],
    n: int,
    batch_size: int,
    config: STARSConfig,
    seed: int,
) -> tuple[STARSStats, str]:
    """Draft `n` whole answers from the prompt in batches, score each final answer, keep the best.

    One reward call scores all `n` answers (they are complete, so nothing is learnt by scoring
    batches early); ties go to the earliest draft. Statistics use the engine's keys and meanings.
    """
    stats = STARSStats()
    started = time.perf_counter()
    generation = backend.open(
        OpenRequest(
            normalize_messages(prompt),
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=seed,
        )
    )
    try:
        stats.prompt_tokens = generation.prompt_tokens
        drafts = []
        while len(drafts) < n:
            drafts += generation.draft(min(batch_size, n - len(drafts)), config.max_new_tokens)
        stats.llm_calls = generation.llm_calls
        stats.llm_forward_tokens = generation.llm_forward_tokens
    finally:
        generation.close()
    stats.tokens_sampled = sum(candidate.num_tokens for candidate in drafts)
    rewards = [float(value) for value in reward.score(prompt, [candidate.text for candidate in drafts])]
    stats.reward_calls = 1
    best = max(range(len(drafts)), key=lambda index: (rewards[index], -index))
    stats.candidates_sampled = len(drafts)
    stats.candidates_rejected = len(drafts) - 1
    stats.segments_accepted = 1
    stats.tokens_emitted = drafts[best].text_tokens
    stats.emitted_rewards.append(rewards[best])
    stats.final_reward = rewards[best]
    stats.elapsed_s = time.perf_counter() - started
    return stats, drafts[best].text


def parse_method(name: str, max_new_tokens: int, base: STARSConfig | None = None) -> Method:
    """A method from its name: `vanilla`, `bon-N`, `stars[-L16][-K4][-q0.5]`, `cards[-L32][-K4][-e3.0]`,
    each optionally with switches `first`, `best`, `flat`, `noveto` (e.g. `stars-first-flat`).

    `base` holds settings shared by every method (temperature, top_p); sweep suffixes override it.
    """
    base_values = (base or STARSConfig()).model_dump()
    base_values["max_new_tokens"] = max_new_tokens
    if name == "vanilla":
        sampling = {key: base_values[key] for key in ("temperature", "top_p")}
        return Method(name, "vanilla", config=STARSConfig.plain_sampling(max_new_tokens, **sampling))
    match = re.fullmatch(r"bon-(\d+)", name)
    if match:
        n = int(match.group(1))
        if not 1 <= n <= 256:
            raise ValueError(f"best-of-N needs 1 <= N <= 256 (got {name!r})")
        return Method(name, "bon", {"n": n}, config=STARSConfig.build(**base_values), best_of=n)
    family, _, suffix = name.partition("-")
    keys = {"stars": _STARS_KEYS, "cards": _CARDS_KEYS}.get(family)
    if keys is None:
        raise ValueError(f"unknown method {name!r}: use vanilla, bon-N, stars[-L#][-K#][-q#], cards[-L#][-K#][-e#]")
    values = dict(base_values)
    if family == "cards":
        values.update(segmentation="entropy", segment_size=max(values["segment_size"], 32))
    sweep: dict[str, float] = {}
    for part in filter(None, suffix.split("-")):
        if part in _FLAGS:
            values.update(_FLAGS[part])
            sweep[part] = 1.0
            continue
        match = re.fullmatch(r"([A-Za-z])([0-9.]+)", part)
        if not match or match.group(1) not in keys:
            raise ValueError(
                f"bad method suffix {part!r} in {name!r}; allowed prefixes: {', '.join(keys)}; "
                f"switches: {', '.join(_FLAGS)}"
            )
        field_name, kind = keys[match.group(1)]
        values[field_name] = kind(match.group(2))
        sweep[field_name] = kind(match.group(2))
    return Method(name, family, sweep, config=STARSConfig.build(**values))
