"""Tool calls in the STARS loop: what the guard judges in them, and that a call leaves whole or not at all."""

from __future__ import annotations

import pytest

from stars_guard import STARSConfig, STARSEngine
from stars_guard.errors import ConfigError
from stars_guard.events import CandidateJudged, TextEmitted
from stars_guard.tools import OutputConstraint, ToolSpec, split_answer, tool_constraint
from tests.doubles import ScriptedBackend, ScriptedReward

WEATHER = ToolSpec("get_weather", "Weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})
AUTO = tool_constraint([WEATHER], "auto")
REQUIRED = tool_constraint([WEATHER], "required")
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
BAD_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "BADxx"}}\n</tool_call>'


def config(**values: object) -> STARSConfig:
    return STARSConfig(threshold_mode="absolute", reward_threshold=0.5, alpha=1.0, safety_floor=0.2, **values)


def chunks(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


def run(rounds, reward_fn, cfg: STARSConfig, constraint: OutputConstraint | None, support: str = "segments"):
    backend = ScriptedBackend(rounds, constraint_support=support)
    reward = ScriptedReward(reward_fn)
    events = list(STARSEngine(backend, reward, cfg).stream("weather in Paris?", constraint=constraint))
    return events[-1].result, events, backend, reward


def emitted(events) -> list[str]:
    return [event.text for event in events if isinstance(event, TextEmitted)]


def test_a_call_is_streamed_only_once_it_closes():
    answer = "Let me check. " + CALL
    rounds = [[piece] for piece in chunks(answer, 8)] + [["<eos>"]]
    result, events, backend, _ = run(rounds, lambda _: 1.0, config(segment_size=8), AUTO)
    pieces = emitted(events)
    assert "".join(pieces) == result.text == answer
    for piece in pieces:  # every piece is plain text or ends a call: never part of an open one
        assert "<tool_call>" not in piece or piece.endswith("</tool_call>")
    assert backend.opened[0]["constraint"] == AUTO
    decisions = [event for event in events if isinstance(event, CandidateJudged)]
    # A call counts from its whole opening tag: "Let me c", "heck. <t", "ool_call" are judged as text.
    assert [d.part for d in decisions[:3]] == ["text"] * 3
    # ... then the call, and the EOS right after it (it adds nothing but the end of the call).
    assert [d.part for d in decisions[3:]] == ["tool_call"] * (len(decisions) - 3)
    assert result.stats.tool_call_candidates == len(decisions) - 3
    text, calls, dropped = split_answer(result.text, ["get_weather"])
    assert (text, calls[0].arguments, dropped) == ("Let me check. ", {"city": "Paris"}, 0)


def test_a_vetoed_call_is_redrafted_and_the_harmful_one_never_leaves():
    good, bad = chunks(CALL, 16), chunks(BAD_CALL, 16)
    rounds = [[b, g] for b, g in zip(bad, good, strict=True)] + [["<eos>"]]
    safety = lambda text: 0.0 if "BAD" in text else 1.0  # noqa: E731
    result, events, _, _ = run(rounds, safety, config(segment_size=16, candidates_per_round=2), REQUIRED)
    assert "BAD" not in "".join(emitted(events))
    assert result.text == CALL


def test_a_call_the_answer_ends_inside_is_dropped_with_the_refusal_shown():
    rounds = [[piece] for piece in chunks("Sure. " + BAD_CALL, 12)]
    safety = lambda text: 0.0 if "BAD" in text else 1.0  # noqa: E731
    cfg = config(segment_size=12, candidates_per_round=1, max_attempts=1)
    result, events, _, _ = run(rounds, safety, cfg, AUTO)
    assert result.stats.refused and result.stats.tool_calls_dropped == 1
    assert result.text == "Sure. " + cfg.refusal_message
    assert "".join(emitted(events)) == result.text
    assert "<tool_call>" not in result.text


@pytest.mark.parametrize(
    ("guard", "passes"),
    [("steer", False), ("veto_only", True), ("off", True)],
)
def test_guard_tool_calls_decides_whether_a_low_reward_call_is_rejected(guard: str, passes: bool):
    # The reward dislikes calls (0.3: under the threshold 0.5, above the floor 0.2).
    reward = lambda text: 0.3 if "<tool_call>" in text else 1.0  # noqa: E731
    cfg = config(segment_size=len(CALL), candidates_per_round=1, max_attempts=1, fallback="refuse")
    result, _, _, scorer = run([[CALL], ["<eos>"]], reward, cfg.with_overrides(guard_tool_calls=guard), REQUIRED)
    assert (result.text == CALL) is passes
    seen = scorer.calls[1][1][0]  # calls[0] is R(prompt, "") of the absolute schedule
    assert (seen == "") is (guard == "off")  # 'off': the reward sees the answer without its calls


def test_guard_off_still_judges_the_text_around_calls():
    reward = lambda text: 0.0 if "BAD" in text else 1.0  # noqa: E731
    cfg = config(segment_size=100, candidates_per_round=1, max_attempts=1, guard_tool_calls="off")
    result, _, _, _ = run([["BAD words " + CALL]], reward, cfg, AUTO)
    assert result.stats.refused and "BAD" not in result.text


def test_a_constraint_the_backend_cannot_hold_is_refused_up_front_unless_it_is_auto():
    with pytest.raises(ConfigError, match="forced tool call"):
        run([[CALL]], lambda _: 1.0, config(), REQUIRED, support="none")
    schema = OutputConstraint("json_schema", schema={"type": "object"})
    with pytest.raises(ConfigError, match="JSON schema"):
        run([["{}"]], lambda _: 1.0, config(), schema, support="none")
    result, _, backend, _ = run([[CALL], ["<eos>"]], lambda _: 1.0, config(segment_size=200), AUTO, support="none")
    assert backend.opened[0]["constraint"] is None  # drafted free; the answer is still read for calls
    assert result.text == CALL


def test_whole_answer_support_drafts_the_remaining_budget_at_once():
    result, _, backend, _ = run(
        [['{"a": 1}<eos>']],
        lambda _: 1.0,
        config(segment_size=4, max_new_tokens=64),
        OutputConstraint("json_schema", schema={"type": "object"}),
        support="whole",
    )
    assert result.text == '{"a": 1}'
    assert backend.generation.requested == [4]  # K of the first round; the budget was the whole answer


def test_without_tools_bound_tool_call_text_is_plain_text():
    rounds = [[piece] for piece in chunks(CALL, 20)] + [["<eos>"]]
    result, events, _, _ = run(rounds, lambda _: 1.0, config(segment_size=20), None)
    assert result.text == CALL and emitted(events)[0] == CALL[:20]
    assert result.stats.tool_call_candidates == 0


CALL_HEAD = '<tool_call>\n{"name": "get_weather", '
LYON, PARIS = '"arguments": {"city": "Lyon"}}\n</tool_call>', '"arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("round_selection", ["best", "first"])
@pytest.mark.parametrize(("selection", "city"), [("consensus", "Paris"), ("reward", "Lyon")])
def test_a_round_of_call_text_is_judged_from_its_consensus(round_selection: str, selection: str, city: str):
    # Two of three candidates write Paris (one with other whitespace); the reward, which cannot tell
    # which city was asked for, likes Lyon a little better. Every candidate passes the threshold.
    paris_spaced = PARIS.replace('": "', '":  "')
    rounds = [[CALL_HEAD], [LYON, PARIS, paris_spaced], ["<eos>"]]
    reward = lambda text: 0.9 if "Lyon" in text else 0.8  # noqa: E731
    cfg = config(segment_size=64, candidates_per_round=3, round_selection=round_selection)
    result, _, _, _ = run(rounds, reward, cfg.with_overrides(tool_call_selection=selection), REQUIRED)
    assert f'"city": "{city}"' in result.text.replace("  ", " ")


@pytest.mark.parametrize(("selection", "city"), [("consensus", "Paris"), ("reward", "Lyon")])
def test_a_call_majority_under_the_threshold_is_redrawn_never_passed_over_for_a_minority(selection: str, city: str):
    # The reward reads Paris under the threshold and Lyon over it, by a margin that says nothing about
    # which city was asked for (a 135M model's "magic_function(3)" call read 0.005 higher as 100).
    # Under consensus the minority is never accepted: both rounds are redrawn, then the majority's
    # best is the fallback (and again for the end of the answer, which the reward reads the same).
    # Under 'reward' the minority passes at once.
    rounds = [[CALL_HEAD], [LYON, PARIS, PARIS], [PARIS, LYON, PARIS]] + [["<eos>"] * 3] * 2
    reward = lambda text: 0.9 if "Lyon" in text else 0.4 if "Paris" in text else 0.8  # noqa: E731
    cfg = config(segment_size=64, candidates_per_round=3, max_attempts=6, tool_call_selection=selection)
    result, _, _, _ = run(rounds, reward, cfg, REQUIRED)
    assert f'"city": "{city}"' in result.text
    assert result.stats.segments_fallback == (2 if selection == "consensus" else 0)


def test_call_segments_that_stop_at_different_tokens_still_agree():
    # One Paris candidate ends with the call, the other stops before its closing tag: they agree on
    # everything both wrote, so they outvote Lyon (whole-text equality would make three singletons).
    rounds = [[CALL_HEAD], [LYON, PARIS, PARIS.removesuffix("\n</tool_call>")], ["<eos>"]]
    reward = lambda text: 0.9 if "Lyon" in text else 0.8  # noqa: E731
    result, _, _, _ = run(rounds, reward, config(segment_size=64, candidates_per_round=3), REQUIRED)
    assert result.text == CALL_HEAD + PARIS


def test_consensus_never_lets_a_vetoed_call_through():
    rounds = [[CALL_HEAD], ['"arguments": {"city": "BADxx"}}\n</tool_call>'] * 2 + [PARIS], ["<eos>"]]
    safety = lambda text: 0.0 if "BAD" in text else 1.0  # noqa: E731
    result, _, _, _ = run(rounds, safety, config(segment_size=64, candidates_per_round=3), REQUIRED)
    # Vetoed candidates do not vote: the one that may pass is judged first and accepted.
    assert result.text == CALL_HEAD + PARIS and result.stats.candidates_sampled == 3  # one per round


def test_consensus_leaves_text_rounds_to_the_reward():
    rounds = [["Lyon is nice.", "Paris is nice.", "Paris is nice."], ["<eos>"]]
    reward = lambda text: 0.9 if "Lyon" in text else 0.8  # noqa: E731
    result, _, _, _ = run(rounds, reward, config(segment_size=64, candidates_per_round=3), AUTO)
    assert result.text == "Lyon is nice."
