"""Validation at the edges: config fields, messages, spec strings, stop scanning."""

from __future__ import annotations

import pytest

from stars_guard import STARSConfig
from stars_guard.errors import ConfigError, InvalidMessagesError, SpecError
from stars_guard.messages import ChatMessage, last_user_text, normalize_messages
from stars_guard.specs import build_backend, build_reward, valid_specs
from stars_guard.stops import StopScanner


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"segment_size": 0}, "segment_size"),
        ({"candidates_per_round": 0}, "candidates_per_round"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"relative_quantile": 1.0}, "relative_quantile"),
        ({"acceptance": "maybe"}, "acceptance"),
        ({"beta": 0}, "beta"),
        ({"fallback": "worst"}, "fallback"),
        ({"time_budget_s": 0}, "time_budget_s"),
        ({"segmnt_size": 8}, "segmnt_size"),
    ],
)
def test_invalid_config_names_the_field(values, field):
    with pytest.raises(ConfigError) as error:
        STARSConfig.build(**values)
    assert field in str(error.value)


def test_absolute_mode_requires_a_threshold_and_a_consistent_floor():
    with pytest.raises(ConfigError, match="reward_threshold is required"):
        STARSConfig.build(threshold_mode="absolute")
    with pytest.raises(ConfigError, match="safety_floor"):
        STARSConfig.build(threshold_mode="absolute", reward_threshold=0.5, safety_floor=0.9)


def test_defaults_match_the_documented_ones():
    config = STARSConfig()
    assert (config.segment_size, config.candidates_per_round, config.max_attempts, config.max_new_tokens) == (
        8,
        4,
        16,
        256,
    )
    assert config.threshold_mode == "relative" and config.acceptance == "hard" and config.fallback == "best"
    assert config.effective_window == 8
    # Issue 5's default: best passing candidate of a round, shaped per-segment budget.
    assert config.round_selection == "best" and config.segment_budget == "shaped"
    assert [config.round_size(index, final=False) for index in range(3)] == [4, 3, 3]
    assert config.round_size(5, final=True) == 6


def test_overrides_apply_every_value_given_none_included_and_validate():
    config = STARSConfig(segment_size=8, seed=3, time_budget_s=5.0)
    assert config.with_overrides() is config
    assert config.with_overrides(seed=None).seed is None  # None is a value: a random seed
    assert config.with_overrides(time_budget_s=None).time_budget_s is None  # no budget, not "unchanged"
    assert config.with_overrides(safety_floor=None).safety_floor is None  # the veto off
    assert config.with_overrides(segment_size=4).segment_size == 4
    with pytest.raises(ConfigError, match="max_new_tokens"):
        config.with_overrides(max_new_tokens=None)  # a field that takes no None says so
    with pytest.raises(ConfigError, match="segment_size"):
        config.with_overrides(segment_size=-2)


def test_messages_accept_strings_dicts_and_chat_messages():
    assert normalize_messages("hi") == [ChatMessage("user", "hi")]
    turns = normalize_messages([{"role": "system", "content": "be brief"}, ChatMessage("user", "hi")])
    assert [turn.role for turn in turns] == ["system", "user"]
    assert last_user_text(turns) == "hi"


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([], "no messages"),
        ("   ", "empty user message"),
        ([{"role": "robot", "content": "x"}], "valid roles"),
        ([{"role": "user", "content": ["image"]}], "only text"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
        (["just a string in a list"], "expected a dict"),
    ],
)
def test_bad_messages_say_what_is_wrong(messages, needle):
    with pytest.raises(InvalidMessagesError, match=needle):
        normalize_messages(messages)


def test_unknown_spec_lists_the_valid_ones():
    with pytest.raises(SpecError) as error:
        build_backend("vllm-but-typo:http://x")
    message = str(error.value)
    for usage in valid_specs("backend"):
        assert usage in message
    with pytest.raises(SpecError, match="valid reward specs"):
        build_reward("nope")
    with pytest.raises(SpecError, match="needs an argument"):
        build_backend("hf")


def test_stop_scanner_finds_stops_across_the_boundary_and_holds_back_prefixes():
    scanner = StopScanner(["END", "\n\nUser:"])
    assert scanner.find("abc EN" + "D!", new_from=6) == 4
    assert scanner.find("abc", new_from=0) is None
    assert scanner.holdback("text E") == 1
    assert scanner.holdback("text EN") == 2
    assert scanner.holdback("text\n\nUse") == 5
    assert scanner.holdback("nothing") == 0
    assert not StopScanner([]) and not StopScanner(None) and not StopScanner([""])
