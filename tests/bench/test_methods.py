"""Method names and Best-of-N on scripted drafts (no model)."""

from __future__ import annotations

import pytest

from stars_guard.bench.methods import DEFAULT_METHODS, best_of_n, parse_method
from stars_guard.config import STARSConfig
from tests.doubles import ScriptedBackend, ScriptedReward


def test_default_methods_cover_the_issue() -> None:
    names = set(DEFAULT_METHODS)
    assert {"vanilla", "bon-4", "bon-8", "bon-16", "stars", "cards"} <= names
    assert any(name.startswith("stars-K") for name in names)
    sizes = {parse_method(name, 64).config.segment_size for name in names if name.startswith("stars")}  # type: ignore[union-attr]
    assert {8, 16, 32} <= sizes  # the issue's segment_size sweep
    assert "stars-first-flat-L16" in names  # the engine default before issue 5, for comparison


def test_method_names_map_to_configs() -> None:
    vanilla = parse_method("vanilla", 48)
    assert vanilla.config is not None
    assert (vanilla.config.segment_size, vanilla.config.candidates_per_round, vanilla.config.max_attempts) == (48, 1, 1)
    bon = parse_method("bon-16", 48)
    assert bon.best_of == 16 and bon.family == "bon"
    stars = parse_method("stars-L8-K2-q0.25", 48)
    assert stars.config is not None
    config = stars.config
    assert (config.segment_size, config.candidates_per_round, config.relative_quantile) == (8, 2, 0.25)
    assert stars.sweep == {"segment_size": 8, "candidates_per_round": 2, "relative_quantile": 0.25}
    default = parse_method("stars", 48)
    assert default.config is not None
    assert default.config.model_dump() == STARSConfig(max_new_tokens=48).model_dump()
    cards = parse_method("cards-e2.5", 48)
    assert cards.config is not None
    assert (cards.config.segmentation, cards.config.entropy_threshold) == ("entropy", 2.5)


def test_switches_select_the_paper_rule_and_a_flat_budget() -> None:
    old = parse_method("stars-first-flat-L16", 64)
    assert old.config is not None
    config = old.config
    assert (config.round_selection, config.segment_budget, config.segment_size) == ("first", "flat", 16)
    assert old.sweep == {"first": 1.0, "flat": 1.0, "segment_size": 16}
    assert parse_method("stars-best", 64).config.round_selection == "best"  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["bon-0", "best-of-4", "stars-Z3", "cards-q0.5", "stars-L", "stars-worst"])
def test_bad_method_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        parse_method(name, 32)


def test_best_of_n_drafts_in_batches_and_keeps_the_best_final_answer() -> None:
    backend = ScriptedBackend([["aa", "bbbb<eos>", "c"], ["dd", "e<eos>"]])
    reward = ScriptedReward(lambda text: {"aa": 0.2, "bbbb": 0.9, "c": 0.1, "dd": 0.9, "e": 0.3}[text])
    stats, text = best_of_n(backend, reward, "hi", 5, 3, STARSConfig(max_new_tokens=8), seed=1)
    assert text == "bbbb"  # ties go to the earliest draft ("dd" scores the same)
    assert len(backend.generation.drafted) == 5 and stats.llm_calls == 2
    assert len(reward.calls) == 1 and stats.reward_calls == 1  # final answers, one batched call
    assert stats.tokens_sampled == 2 + 5 + 1 + 2 + 2  # EOS tokens count as sampled
    assert stats.tokens_emitted == 4
    assert (stats.candidates_sampled, stats.candidates_rejected) == (5, 4)
    assert stats.final_reward == 0.9
    assert backend.generation.closed
    assert backend.opened[-1]["seed"] == 1 and backend.opened[-1]["max_new_tokens"] == 8
