"""`OverridePolicy`, the pure rule behind the service's and the locked chat model's overrides."""

from __future__ import annotations

import dataclasses

import pytest

from stars_guard.config import STARSConfig
from stars_guard.errors import ConfigError, LockedOverrideError
from stars_guard.overrides import COST_LOWERING, DEFAULT_POLICY, OverridePolicy

BASE = STARSConfig(max_new_tokens=128, segment_candidates=(4, 2))


def test_the_default_grants_nothing_beyond_lowering_the_cost():
    assert OverridePolicy().allowed == frozenset() and OverridePolicy() == DEFAULT_POLICY
    assert {"max_new_tokens", "time_budget_s", "seed"} == COST_LOWERING
    config = DEFAULT_POLICY.apply(BASE, {"max_new_tokens": 16, "time_budget_s": 2.5, "seed": 7})
    assert (config.max_new_tokens, config.time_budget_s, config.seed) == (16, 2.5, 7)
    assert BASE.max_new_tokens == 128  # the base is never changed


@pytest.mark.parametrize(
    "overrides",
    [
        {"acceptance": "soft", "beta": 1e6},
        {"relative_quantile": 0.01},
        {"max_attempts": 1, "candidates_per_round": 1},
        {"threshold_mode": "absolute", "reward_threshold": -1e9},
        {"temperature": 0.0},
        {"safety_floor": None, "on_reward_error": "fail_open"},
        {"max_new_tokens": 129},
    ],
)
def test_anything_else_is_locked_and_the_message_names_each_field_and_the_remedy(overrides):
    with pytest.raises(LockedOverrideError) as raised:
        DEFAULT_POLICY.apply(BASE, overrides)
    changed = list(overrides)  # None is a value too: safety_floor=None turns the veto off
    assert raised.value.fields == tuple(changed) == raised.value.params
    message = str(raised.value)
    for name in changed:
        assert name in message and f"--allow-override {name}" in message
    assert "OverridePolicy(allowed=" in message
    assert isinstance(raised.value, ConfigError)  # callers handling bad config handle this too


def test_allowed_fields_take_any_value():
    policy = OverridePolicy(allowed={"temperature", "max_new_tokens"})
    config = policy.apply(BASE, {"temperature": 0, "max_new_tokens": 4096})
    assert (config.temperature, config.max_new_tokens) == (0.0, 4096)


def test_equal_and_coerced_values_are_not_changes_but_none_is_a_value():
    same = {"temperature": 0.8, "threshold_mode": "relative", "segment_candidates": [4, 2], "safety_floor": "auto"}
    assert DEFAULT_POLICY.apply(BASE, same) == BASE
    assert DEFAULT_POLICY.apply(BASE, {"max_attempts": 16.0}) == BASE  # validation coerces 16.0 to 16
    # None was once dropped silently ("unchanged"); it is a value, judged like any other.
    with pytest.raises(LockedOverrideError, match="safety_floor"):
        DEFAULT_POLICY.apply(BASE, {"safety_floor": None})
    assert DEFAULT_POLICY.apply(BASE, {"seed": None}).seed is None


def test_time_budget_may_only_shrink_and_is_free_when_the_base_has_none():
    assert DEFAULT_POLICY.apply(BASE, {"time_budget_s": 1e6}).time_budget_s == 1e6
    budgeted = BASE.with_overrides(time_budget_s=5.0)
    assert DEFAULT_POLICY.apply(budgeted, {"time_budget_s": 5.0}).time_budget_s == 5.0
    with pytest.raises(LockedOverrideError, match=r"at most 5\.0"):
        DEFAULT_POLICY.apply(budgeted, {"time_budget_s": 5.5})
    with pytest.raises(LockedOverrideError, match=r"got None.*at most 5\.0"):  # no budget is no lowering
        DEFAULT_POLICY.apply(budgeted, {"time_budget_s": None})


def test_locked_fields_are_reported_before_invalid_values_unknown_names_are_invalid_config():
    with pytest.raises(LockedOverrideError) as raised:
        DEFAULT_POLICY.apply(BASE, {"relative_quantile": 7, "segment_size": 0})
    assert raised.value.fields == ("relative_quantile", "segment_size")
    with pytest.raises(ConfigError) as invalid:
        DEFAULT_POLICY.apply(BASE, {"no_such_field": 1})
    assert not isinstance(invalid.value, LockedOverrideError) and "no_such_field" in str(invalid.value)
    with pytest.raises(ConfigError) as bad_value:
        DEFAULT_POLICY.apply(BASE, {"max_new_tokens": 0})  # allowed (lower), but invalid
    assert not isinstance(bad_value.value, LockedOverrideError) and "max_new_tokens" in str(bad_value.value)


def test_names_say_the_fields_as_the_caller_spelled_them():
    with pytest.raises(LockedOverrideError) as raised:
        DEFAULT_POLICY.apply(BASE, {"max_new_tokens": 500}, names={"max_new_tokens": "max_tokens"})
    assert raised.value.params == ("max_tokens",) and raised.value.fields == ("max_new_tokens",)
    assert "max_tokens: got 500" in str(raised.value) and "--allow-override max_new_tokens" in str(raised.value)


def test_unlocked_allows_everything():
    config = OverridePolicy.unlocked().apply(BASE, {"acceptance": "soft", "on_reward_error": "fail_open"})
    assert (config.acceptance, config.on_reward_error) == ("soft", "fail_open")
    assert OverridePolicy.unlocked().allowed == frozenset(STARSConfig.model_fields)


@pytest.mark.parametrize("allowed", [{"temprature"}, {"temperature", "max_tokens"}, "temperature"])
def test_the_policy_only_names_real_config_fields(allowed):
    with pytest.raises(ConfigError):
        OverridePolicy(allowed=allowed)


def test_the_policy_is_immutable_and_hashable():
    policy = OverridePolicy(allowed=["top_p"])  # any collection of names
    assert policy.allowed == frozenset({"top_p"}) and hash(policy) == hash(OverridePolicy(allowed={"top_p"}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.allowed = frozenset()  # type: ignore[misc]
    assert "top_p" in policy.describe() and "lower only" in policy.describe()
