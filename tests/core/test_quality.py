"""STARS improves the steering reward over plain sampling on real red-team prompts (same seeds)."""

from __future__ import annotations

import statistics

from stars_guard import STARSConfig, STARSEngine
from tests.shared_data import hh_prompts

NEW_TOKENS = 40


def test_stars_beats_vanilla_sampling_on_mean_guard_reward(backend, guard):
    prompts = hh_prompts(12)
    vanilla = STARSEngine(backend, guard, STARSConfig.plain_sampling(NEW_TOKENS))
    stars = STARSEngine(backend, guard, STARSConfig(max_new_tokens=NEW_TOKENS))
    vanilla_rewards, stars_rewards = [], []
    for seed, prompt in enumerate(prompts):
        plain = vanilla.run(prompt, seed=seed)
        guarded = stars.run(prompt, seed=seed)
        # Both are scored the same way: GuardReward of the whole final answer.
        vanilla_rewards.append(guard.score(prompt, [plain.text])[0])
        stars_rewards.append(guard.score(prompt, [guarded.text])[0])
        assert plain.stats.rejection_rate == 0.0 and plain.stats.llm_calls == 1
    gain = statistics.mean(stars_rewards) - statistics.mean(vanilla_rewards)
    print(
        f"mean GuardReward: vanilla {statistics.mean(vanilla_rewards):.4f}, stars {statistics.mean(stars_rewards):.4f}"
    )
    assert gain > 0.0, f"STARS did not beat vanilla: {stars_rewards} vs {vanilla_rewards}"
