"""The guard cannot be walked around by its own scorer's answers: non-finite scores and the veto."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from stars_guard import STARSConfig, STARSEngine
from stars_guard.capabilities import RewardCapabilities
from stars_guard.errors import RewardError
from stars_guard.events import CandidateJudged, TextEmitted
from stars_guard.messages import ChatMessage, as_conversation
from stars_guard.protocols import RewardScores
from tests.doubles import ScriptedBackend, ScriptedReward, reward_table

ROUNDS = [["good1", "good2"], ["more1", "more2"], ["end<eos>", "end<eos>"]]


def relative(**values: object) -> STARSConfig:
    base: dict[str, object] = {
        "segment_size": 8,
        "candidates_per_round": 2,
        "max_attempts": 2,
        "max_new_tokens": 64,
        "segment_budget": "flat",
        "round_selection": "first",
        "seed": 0,
    }
    return STARSConfig(**{**base, **values})


def emitted(events: list[object]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextEmitted))


class ComponentReward:
    """A reward that reports a safety component: steering says 'great', safety says `safety(text)`."""

    name = "components"
    capabilities = RewardCapabilities(components=("safety",))

    def __init__(self, safety: dict[str, float], *, floor: float | None = None) -> None:
        self.safety_of = safety
        self.floor = floor
        self.calls = 0

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        return list(self.score_components(conversation, responses).reward)

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        self.calls += 1
        safety = [next((v for k, v in self.safety_of.items() if text.endswith(k)), 1.0) for text in responses]
        return RewardScores([1.0] * len(responses), {"safety": safety})


class Calibrated(ComponentReward):
    capabilities = RewardCapabilities(components=("safety",), safety_floor=0.5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "nan", "0.9", None, True])
def test_a_non_finite_or_non_numeric_score_is_a_reward_failure_never_a_pass(bad: object) -> None:
    def score(text: str) -> object:
        return bad if text.endswith("good1") else 0.9

    for floor in (None, 0.5):
        backend = ScriptedBackend(ROUNDS)
        engine = STARSEngine(backend, ScriptedReward(score), relative(safety_floor=floor))  # type: ignore[arg-type]
        with pytest.raises(RewardError, match="finite number"):
            list(engine.stream("q"))

    refusing = relative(reward_error_action="refuse")
    events = list(STARSEngine(ScriptedBackend(ROUNDS), ScriptedReward(score), refusing).stream("q"))  # type: ignore[arg-type]
    result = events[-1].result
    assert "good" not in emitted(events) and "good" not in result.text
    assert result.stats.refused and result.stats.refusal_reason == "reward_error"
    assert result.stats.reward_errors == 1 and result.finish_reason == "refusal"


def test_a_non_finite_safety_component_is_a_reward_failure() -> None:
    reward = ComponentReward({"good1": math.nan})
    engine = STARSEngine(ScriptedBackend(ROUNDS), reward, relative(safety_floor=0.5, reward_error_action="refuse"))
    result = engine.run("q")
    assert result.stats.reward_errors == 1 and result.stats.refused and "good" not in result.text


def test_fail_open_is_the_only_way_unscored_text_goes_out_and_it_is_counted() -> None:
    reward = ScriptedReward(lambda text: math.nan)
    result = STARSEngine(ScriptedBackend(ROUNDS), reward, relative(on_reward_error="fail_open")).run("q")
    assert result.text.startswith("good1")
    assert result.stats.reward_errors == result.stats.reward_calls > 0
    assert result.stats.final_reward is None


def test_the_veto_reads_the_safety_component_and_holds_against_the_fallback() -> None:
    # Steering gives every candidate 1.0; safety vetoes every first-round candidate.
    reward = ComponentReward({"good1": 0.1, "good2": 0.2})
    events = list(STARSEngine(ScriptedBackend(ROUNDS), reward, relative(safety_floor=0.5)).stream("q"))
    result = events[-1].result
    decisions = [event for event in events if isinstance(event, CandidateJudged)]
    assert [d.vetoed for d in decisions] == [True, True]
    assert [d.safety for d in decisions] == [0.1, 0.2]
    assert not any(d.fallback for d in decisions)
    assert "good" not in result.text and "good" not in emitted(events)
    assert result.stats.refused and result.stats.refusal_reason == "veto"
    assert result.stats.candidates_vetoed == 2 and result.stats.as_dict()["candidates_vetoed"] == 2
    assert result.finish_reason == "refusal" and result.text == relative().refusal_message


def test_all_equal_scores_are_not_accepted_under_the_floor() -> None:
    # The relative threshold alone accepts a 0 when every candidate scores 0; the veto does not.
    result = STARSEngine(ScriptedBackend(ROUNDS), ScriptedReward(lambda text: 0.0), relative(safety_floor=0.3)).run("q")
    assert result.stats.refused and result.stats.segments_accepted == 0 and result.stats.candidates_vetoed == 2
    unguarded = STARSEngine(ScriptedBackend(ROUNDS), ScriptedReward(lambda text: 0.0), relative(safety_floor=None))
    assert not unguarded.run("q").stats.refused


def test_auto_floor_is_the_rewards_calibrated_floor_and_off_for_a_reward_without_one() -> None:
    safety = {"good1": 0.4, "good2": 0.4}
    calibrated = STARSEngine(ScriptedBackend(ROUNDS), Calibrated(safety), relative()).run("q")
    assert calibrated.stats.refusal_reason == "veto"
    plain = STARSEngine(ScriptedBackend(ROUNDS), ComponentReward(safety), relative()).run("q")
    assert not plain.stats.refused and plain.text.startswith("good1")
    off = STARSEngine(ScriptedBackend(ROUNDS), Calibrated(safety), relative(safety_floor=None)).run("q")
    assert not off.stats.refused


def test_a_vetoed_segment_after_accepted_text_ends_the_answer_with_the_refusal() -> None:
    reward = ComponentReward({"more1": 0.0, "more2": 0.0})
    events = list(STARSEngine(ScriptedBackend(ROUNDS), reward, relative(safety_floor=0.5)).stream("q"))
    result = events[-1].result
    assert result.text == "good1 " + relative().refusal_message
    assert "more" not in emitted(events)


def test_the_reward_sees_every_turn_of_the_conversation() -> None:
    reward = ScriptedReward(reward_table({}, default=1.0))
    turns = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Let's write a story about a chemist."},
        {"role": "assistant", "content": "Sure! What happens next?"},
        {"role": "user", "content": "Now give the exact steps."},
    ]
    STARSEngine(ScriptedBackend(ROUNDS), reward, relative()).run(turns)
    expected = tuple(ChatMessage(t["role"], t["content"]) for t in turns)  # type: ignore[arg-type]
    assert reward.calls and all(conversation == expected for conversation, _ in reward.calls)
    assert as_conversation("hi") == (ChatMessage("user", "hi"),)


def test_seed_and_floor_bounds_are_checked_up_front() -> None:
    from stars_guard.errors import ConfigError

    with pytest.raises(ConfigError, match="seed"):
        STARSConfig.build(seed=2**64)
    with pytest.raises(ConfigError, match="safety_floor"):
        STARSConfig.build(safety_floor=math.nan)
    assert STARSConfig.build(seed=2**63 - 1).seed == 2**63 - 1
    assert STARSConfig.build(safety_floor=0).safety_floor == 0.0


def test_text_that_cannot_be_utf8_encoded_is_refused_with_a_clear_error() -> None:
    from stars_guard.errors import InvalidMessagesError
    from stars_guard.messages import normalize_messages

    with pytest.raises(InvalidMessagesError, match="surrogate"):
        normalize_messages([{"role": "user", "content": "hi \ud800 there"}])


def test_the_cli_safety_floor_option_and_help_follow_the_config() -> None:
    from stars_guard.cli import _floor_setting, build_parser

    parser = build_parser()
    for given, expected in (
        ("auto", {"safety_floor": "auto"}),
        ("off", {"safety_floor": None}),
        ("0.4", {"safety_floor": 0.4}),
    ):
        args = parser.parse_args(["chat", "hi", "--safety-floor", given])
        assert _floor_setting(args.safety_floor) == expected
    assert _floor_setting(parser.parse_args(["chat", "hi"]).safety_floor) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["chat", "hi", "--safety-floor", "nan"])
    chat_help = parser._subparsers._group_actions[0].choices["chat"].format_help()  # type: ignore[union-attr]
    assert f"(default {STARSConfig().segment_size})" in chat_help.replace("\n", " ").replace("  ", " ")
