"""Per-segment budget, round selection and the rising quantile: the issue-5 engine knobs."""

from __future__ import annotations

import pytest

from stars_guard import STARSConfig, STARSEngine
from stars_guard.errors import ConfigError
from stars_guard.events import CandidateJudged, TextEmitted
from stars_guard.policy import ThresholdSchedule
from tests.doubles import ScriptedBackend, ScriptedReward, reward_table


def run(rounds, reward_fn, config: STARSConfig):
    backend = ScriptedBackend(rounds)
    events = list(STARSEngine(backend, ScriptedReward(reward_fn), config).stream("question?"))
    return events[-1].result, events, backend.generation


def judged(events) -> list[CandidateJudged]:
    return [event for event in events if isinstance(event, CandidateJudged)]


def absolute(**values: object) -> STARSConfig:
    return STARSConfig(threshold_mode="absolute", reward_threshold=0.5, alpha=1.0, **values)


def test_best_selection_accepts_the_highest_passing_candidate():
    rewards = reward_table({"aa": 0.6, "bb": 0.9, "cc": 0.7, "dd": 0.1}, default=1.0)
    config = absolute(segment_size=2, max_new_tokens=4, round_selection="best")
    result, events, generation = run([["aa", "bb", "cc", "dd"], ["x<eos>"] * 4], rewards, config)
    decisions = judged(events)
    assert [(d.text, d.accepted) for d in decisions[:1]] == [("bb", True)]  # judged first: highest reward
    assert decisions[0].attempt == 2  # the attempt number is still its draft index
    assert generation.committed == ["bb"] and result.text.startswith("bb")
    assert result.stats.candidates_rejected == 0  # aa and cc were never judged, like unused drafts


def test_best_selection_rejects_the_whole_round_when_its_best_fails():
    rewards = reward_table({"a": 0.1, "b": 0.3, "c": 0.2, "d": 0.8}, default=0.0)
    config = absolute(segment_size=1, max_new_tokens=1, candidates_per_round=3, round_selection="best")
    result, events, _ = run([["a", "b", "c"], ["d", "a", "a"]], rewards, config)
    assert [(d.text, d.accepted) for d in judged(events)] == [
        ("b", False),
        ("c", False),
        ("a", False),
        ("d", True),
    ]
    assert result.text == "d" and result.stats.candidates_rejected == 3
    emitted = "".join(event.text for event in events if isinstance(event, TextEmitted))
    assert emitted == "d"  # rejected text never leaves the engine


def test_first_selection_is_the_papers_index_order():
    rewards = reward_table({"aa": 0.6, "bb": 0.9}, default=1.0)
    config = absolute(segment_size=2, max_new_tokens=2, round_selection="first")
    result, _, _ = run([["aa", "bb"]], rewards, config)
    assert result.text == "aa"


def test_round_size_follows_segment_and_final_candidates():
    config = STARSConfig(max_new_tokens=5, segment_size=2, segment_candidates=(3, 1), final_candidates=5)
    rewards = reward_table({}, default=1.0)
    rounds = [["ab", "cd", "ef", "gh"], ["ij", "kl", "mn"], ["o", "p", "q", "r", "s", "t"]]
    result, _, generation = run(rounds, rewards, config)
    # K=3 for segment 0, then 1 (last value repeats), then 5 for the segment that reaches max_new_tokens.
    assert generation.drafted == ["ab", "cd", "ef", "ij", "o", "p", "q", "r", "s"]
    assert result.stats.tokens_sampled == 3 * 2 + 2 + 5
    assert config.round_size(7, final=False) == 1 and config.round_size(0, final=True) == 5


def test_quantile_rises_over_the_answer():
    config = STARSConfig(relative_quantile=0.25, relative_quantile_end=0.75, max_new_tokens=100, relative_window=5)
    schedule = ThresholdSchedule(config)
    schedule.observe([0.0, 1.0, 2.0, 3.0, 4.0])
    assert schedule.threshold(0) == pytest.approx(1.0)
    assert schedule.threshold(50) == pytest.approx(2.0)
    assert schedule.threshold(100) == pytest.approx(3.0)
    assert schedule.threshold(500) == pytest.approx(3.0)  # capped at the end quantile


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"segment_candidates": [0]}, "segment_candidates"),
        ({"segment_candidates": []}, "segment_candidates"),
        ({"final_candidates": 0}, "final_candidates"),
        ({"relative_quantile_end": 1.0}, "relative_quantile_end"),
        ({"round_selection": "random"}, "round_selection"),
    ],
)
def test_new_fields_are_validated_by_name(values, field):
    with pytest.raises(ConfigError) as error:
        STARSConfig.build(**values)
    assert field in str(error.value)


def test_shaped_budget_scales_with_k_and_flat_keeps_k():
    shaped = STARSConfig(candidates_per_round=8)
    assert [shaped.round_size(0, False), shaped.round_size(1, False), shaped.round_size(9, True)] == [8, 6, 12]
    flat = STARSConfig(candidates_per_round=8, segment_budget="flat")
    assert {flat.round_size(index, final) for index in range(3) for final in (False, True)} == {8}
    single = STARSConfig(candidates_per_round=1)
    assert {single.round_size(index, final) for index in range(3) for final in (False, True)} == {1}
