"""Adaptive round sizes: the cost line, the choice of k, and the engine under `segment_budget="adaptive"`."""

from __future__ import annotations

import pytest

from stars_guard import STARSConfig, STARSEngine
from stars_guard.config import AUTO_SEGMENT_SIZE
from stars_guard.events import TextEmitted
from stars_guard.round_sizing import AdaptiveRounds, RoundCosts
from tests.doubles import ScriptedBackend, ScriptedReward


def costs(points: dict[int, float]) -> RoundCosts:
    """A cost line from {round size: seconds per drafted token}."""
    learnt = RoundCosts()
    for size, seconds in points.items():
        learnt.observe(size, 8, seconds * 8)
    return learnt


def test_the_cost_line_is_fitted_from_two_round_sizes():
    assert costs({4: 0.2}).line() is None
    fixed, per_candidate = costs({1: 0.1, 4: 0.2}).line()
    assert fixed == pytest.approx(0.1 - 0.1 / 3) and per_candidate == pytest.approx(0.1 / 3)
    flat = costs({1: 0.3, 4: 0.1}).line()  # a wider round measured faster: no negative marginal cost
    assert flat is not None and flat[1] == 0.0


def test_cheap_extra_candidates_buy_wide_rounds_and_dear_ones_narrow():
    in_process = AdaptiveRounds(costs({1: 0.10, 4: 0.13}))  # 4 candidates cost 1.3x one
    engine = AdaptiveRounds(costs({1: 0.10, 4: 0.40}))  # each candidate costs about a round
    assert in_process.size(4, first_segment=False) >= 3
    assert engine.size(4, first_segment=False) == 1


def test_rejections_widen_the_rounds_and_acceptances_narrow_them():
    rounds = AdaptiveRounds(costs({1: 0.10, 4: 0.25}))
    rounds.observe([True] * 6)
    assert rounds.size(6, first_segment=False) == 1
    rounds.observe([False] * 12)
    assert rounds.size(6, first_segment=False) >= 3


def test_the_first_segment_gets_the_full_round_and_unknown_costs_are_probed():
    learnt = RoundCosts()
    rounds = AdaptiveRounds(learnt)
    assert rounds.size(4, first_segment=True) == 4
    assert rounds.size(3, first_segment=False) == 1  # nothing timed: probe one candidate
    learnt.observe(1, 8, 0.8)
    assert rounds.size(3, first_segment=False) == 3  # then a full round: the second point of the line
    assert rounds.size(1, first_segment=False) == 1


def engine(
    rounds: list[list[str]], reward, *, then: list[str] | None = None, **values: object
) -> tuple[STARSEngine, ScriptedBackend]:
    cfg = STARSConfig(
        threshold_mode="absolute", reward_threshold=0.5, alpha=1.0, safety_floor=0.2, segment_size=4, **values
    )
    backend = ScriptedBackend(rounds, then=then)
    return STARSEngine(backend, ScriptedReward(reward), cfg), backend


def test_the_engine_sizes_rounds_from_the_learnt_costs():
    segments = [["abcd"] * 4, *[["efgh"] * 4 for _ in range(5)], ["<eos>"]]
    stars, backend = engine(segments, lambda _: 1.0, segment_budget="adaptive", max_new_tokens=24)
    for size, seconds in {1: 0.10, 4: 0.40}.items():  # as on a serving engine
        stars.round_costs.observe(size, 4, seconds * 4)
    result = stars.run("hi")
    # The first segment gets K; then every candidate passes and each costs a round: one at a time.
    assert backend.generation.requested[0] == 4 and set(backend.generation.requested[1:]) == {1}
    assert result.stats.tokens_sampled < 4 * result.stats.tokens_emitted


@pytest.mark.parametrize("extra_candidate_cost", [0.01, 0.40], ids=["wide-rounds", "narrow-rounds"])
def test_adaptive_rounds_never_emit_vetoed_text(extra_candidate_cost: float):
    # Round sizes follow wall time, so the script must not depend on them: every round, however
    # wide, drafts from the same rotation, and the costs start where a wide or a narrow rule lives.
    bad, good = "BAD!", "good"
    stars, _ = engine(
        [],
        lambda text: 0.0 if "BAD" in text else 1.0,
        then=[bad, good, bad, good],
        segment_budget="adaptive",
        round_selection="first",  # judge the vetoed candidate too, not only the best
        max_new_tokens=16,
    )
    for size, seconds in {1: 0.10, 4: 0.10 + 3 * extra_candidate_cost}.items():
        stars.round_costs.observe(size, 4, seconds * 4)
    events = list(stars.stream("hi"))
    shown = "".join(event.text for event in events if isinstance(event, TextEmitted))
    assert "BAD" not in shown and shown == events[-1].result.text
    assert events[-1].result.stats.candidates_vetoed > 0


def test_auto_segments_run_to_the_next_cache_block_boundary():
    # Prompt of 7 tokens, blocks of 16: each round's prompt should end one past a boundary (17, 33,
    # ...): segments of 10, then 16; the last one is cut by max_new_tokens.
    rounds = [["x" * 64]] * 5
    config = STARSConfig(segment_size="auto", max_new_tokens=40, candidates_per_round=1)
    aligned = ScriptedBackend(rounds, cache_block=16)
    STARSEngine(aligned, ScriptedReward(lambda _: 1.0), config).run("hi")
    assert aligned.generation.budgets == [10, 16, 14]
    # A first candidate that ended a token early leaves a 1-token sliver: run on to the next boundary.
    sliver = ScriptedBackend([["x" * 9], *rounds], cache_block=16)
    STARSEngine(sliver, ScriptedReward(lambda _: 1.0), config).run("hi")
    assert sliver.generation.budgets == [10, 17, 14]
    # A cache that matches single tokens (blocks of 1) keeps segments AUTO_SEGMENT_SIZE long, not 1.
    tiny = ScriptedBackend(rounds, cache_block=1)
    STARSEngine(tiny, ScriptedReward(lambda _: 1.0), config).run("hi")
    assert tiny.generation.budgets[:2] == [AUTO_SEGMENT_SIZE] * 2
    # A backend without block caching gets AUTO_SEGMENT_SIZE.
    plain = ScriptedBackend(rounds)
    STARSEngine(plain, ScriptedReward(lambda _: 1.0), config).run("hi")
    assert plain.generation.budgets[:2] == [AUTO_SEGMENT_SIZE] * 2
