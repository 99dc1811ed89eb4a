"""`STARSChatModel(override_policy=...)`: call kwargs that would weaken the guard are refused.

Without a policy the model's owner calls it and every kwarg is allowed (as before). With
`OverridePolicy()` call kwargs follow the service's rule: only lowering `max_tokens` / `timeout`,
and `seed`, unless the policy allows more. The scripted reward rejects every "BAD" candidate, so a
"BAD" in an answer shows what a weakening kwarg would have let through.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from stars_guard.errors import ConfigError, LockedOverrideError
from stars_guard.langchain.chat_model import STARSChatModel
from stars_guard.overrides import OverridePolicy
from tests.doubles import CONFIG, ROUNDS, KeywordReward
from tests.doubles import SeededBackend as ScriptedBackend

GUARDED_ANSWER = "Hello, world!"


def scripted_model(**fields: Any) -> STARSChatModel:
    return STARSChatModel(backend=ScriptedBackend(ROUNDS), reward=KeywordReward(), config=CONFIG, **fields)


def config_of(llm: STARSChatModel, **kwargs: Any) -> Any:
    return llm._prepare([HumanMessage("hi")], None, kwargs).engine.config


WEAKENING = [
    pytest.param({"acceptance": "soft", "beta": 1e6}, ("acceptance", "beta"), id="soft"),
    pytest.param({"max_attempts": 1, "candidates_per_round": 1}, ("max_attempts", "candidates_per_round"), id="once"),
    pytest.param({"reward_threshold": -1e9}, ("reward_threshold",), id="threshold"),
    pytest.param({"temperature": 0}, ("temperature",), id="greedy"),
]


@pytest.mark.parametrize(("kwargs", "names"), WEAKENING)
def test_without_a_policy_the_owner_may_pass_anything(kwargs, names):
    assert "BAD" in scripted_model().invoke("hi", **kwargs).content


@pytest.mark.parametrize(("kwargs", "names"), WEAKENING)
def test_a_locked_model_refuses_weakening_kwargs_naming_them(kwargs, names):
    llm = scripted_model(override_policy=OverridePolicy())
    with pytest.raises(LockedOverrideError) as raised:
        llm.invoke("hi", **kwargs)
    assert raised.value.params == names
    for name in names:
        assert name in str(raised.value) and f"--allow-override {name}" in str(raised.value)
    assert llm.invoke("hi").content == GUARDED_ANSWER  # nothing was changed by the refused call


@pytest.mark.parametrize(("kwargs", "names"), WEAKENING)
def test_a_policy_that_allows_the_fields_lets_the_kwargs_through(kwargs, names):
    llm = scripted_model(override_policy=OverridePolicy(allowed=set(names)))
    assert "BAD" in llm.invoke("hi", **kwargs).content


def test_every_entry_point_applies_the_policy():
    llm = scripted_model(override_policy=OverridePolicy())
    with pytest.raises(LockedOverrideError):
        list(llm.stream("hi", temperature=0))
    with pytest.raises(LockedOverrideError):
        asyncio.run(llm.ainvoke("hi", temperature=0))
    with pytest.raises(LockedOverrideError):
        llm.bind(max_attempts=1).invoke("hi")
    with pytest.raises(ConfigError):  # the error is a ConfigError (and a ValueError) like any bad value
        llm.invoke("hi", safety_floor=None, fallback="best", on_reward_error="fail_open")


def test_locked_models_may_still_lower_the_cost_and_pick_a_seed():
    llm = scripted_model(override_policy=OverridePolicy())
    config = config_of(llm, max_tokens=8, timeout=3.0, seed=11)
    assert (config.max_new_tokens, config.time_budget_s, config.seed) == (8, 3.0, 11)
    assert config_of(llm, max_new_tokens=CONFIG.max_new_tokens).max_new_tokens == CONFIG.max_new_tokens
    with pytest.raises(LockedOverrideError, match="max_tokens: got 65") as raised:
        config_of(llm, max_tokens=CONFIG.max_new_tokens + 1)
    assert raised.value.fields == ("max_new_tokens",)  # named as the caller spelled it, mapped to the field


def test_the_models_own_fields_are_the_base_the_kwargs_are_judged_against():
    llm = scripted_model(override_policy=OverridePolicy(), temperature=0.3, max_tokens=32, timeout=5.0)
    assert config_of(llm).temperature == 0.3  # the owner's fields are never checked
    assert config_of(llm, temperature=0.3).temperature == 0.3  # equal: not a change
    with pytest.raises(LockedOverrideError, match="at most 32"):
        config_of(llm, max_tokens=48)  # under the config's 64, but above the model's own limit
    with pytest.raises(LockedOverrideError, match="timeout"):
        config_of(llm, timeout=10.0)
    assert config_of(llm, timeout=1.0).time_budget_s == 1.0


def test_unknown_kwargs_are_still_refused_as_before():
    llm = scripted_model(override_policy=OverridePolicy())
    with pytest.raises(TypeError, match="max_new_token"):
        llm.invoke("hi", max_new_token=5)


def test_the_policy_field_defaults_to_none_and_names_real_fields():
    assert scripted_model().override_policy is None
    with pytest.raises(ConfigError, match="temprature"):
        scripted_model(override_policy=OverridePolicy(allowed={"temprature"}))
    unlocked = scripted_model(override_policy=OverridePolicy.unlocked())
    assert "BAD" in unlocked.invoke("hi", temperature=0).content
