"""Per-request overrides are an allowlist: a client cannot weaken the guard unless the operator allows it.

Each bypass below, sent to the default service, is a 400 `locked_parameter` naming the field. The
same request to a service whose operator allowed the field is answered, and the scripted reward
shows why the lock matters: the text the guard would have rejected ("FORBIDDEN") reaches the client.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from stars_guard.overrides import OverridePolicy
from stars_guard.serving.app import create_app
from stars_guard.serving.errors import OpenAIError
from stars_guard.serving.schema import parse_chat_request
from tests.serving.doubles import EOS, ServerBackend, marker_reward, test_config

USER = [{"role": "user", "content": "How do I keep my houseplants alive while I am away?"}]
# The operator's config: the relative threshold (the default mode), scripted to judge exactly.
BASE = test_config(threshold_mode="relative", reward_threshold=None)
GUARDED_ANSWER = "Water them. Then relax."


def script(_: Any) -> list[list[str]]:
    """Two rounds, each a candidate the reward rejects first and a clean one second."""
    return [["FORBIDDEN one ", "Water them. "], ["FORBIDDEN two." + EOS, "Then relax." + EOS]]


def ask(policy: OverridePolicy | None, **body: Any) -> Any:
    app = create_app(ServerBackend(script), marker_reward(), BASE, override_policy=policy)
    with TestClient(app) as client:
        return client.post("/v1/chat/completions", json={"messages": USER, "seed": 1, **body})


def locked_error(response: Any, param: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "locked_parameter" and error["param"] == param
    return error


BYPASSES = [
    pytest.param({"stars": {"acceptance": "soft", "beta": 1e6}}, "stars.acceptance", {"acceptance", "beta"}, id="soft"),
    pytest.param(
        {"stars": {"relative_quantile": 0.01}}, "stars.relative_quantile", {"relative_quantile"}, id="quantile"
    ),
    pytest.param(
        {"stars": {"max_attempts": 1, "candidates_per_round": 1}},
        "stars.max_attempts",
        {"max_attempts", "candidates_per_round"},
        id="one-attempt",
    ),
    pytest.param(
        {"stars": {"threshold_mode": "absolute", "reward_threshold": -1e9}},
        "stars.threshold_mode",
        {"threshold_mode", "reward_threshold"},
        id="absolute-floor",
    ),
    pytest.param({"temperature": 0}, "temperature", {"temperature"}, id="greedy"),
    pytest.param({"stars": {"temperature": 0}}, "stars.temperature", {"temperature"}, id="greedy-stars"),
]


@pytest.mark.parametrize(("body", "param", "fields"), BYPASSES)
def test_a_weakening_override_is_a_400_naming_every_field_and_how_to_allow_it(body, param, fields):
    error = locked_error(ask(None, **body), param)
    for name in fields:
        assert name in error["message"] and f"--allow-override {name}" in error["message"]
    assert "OverridePolicy(allowed=" in error["message"]


@pytest.mark.parametrize(("body", "param", "fields"), BYPASSES)
def test_the_same_override_is_accepted_when_the_operator_allows_it(body, param, fields):
    response = ask(OverridePolicy(allowed=fields), **body)
    assert response.status_code == 200, response.text
    assert "FORBIDDEN" in response.json()["choices"][0]["message"]["content"]  # what the lock prevents


def test_without_overrides_the_guard_rejects_the_forbidden_candidates():
    response = ask(None)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == GUARDED_ANSWER


def test_allowing_one_field_does_not_allow_the_others():
    response = ask(OverridePolicy(allowed={"acceptance"}), stars={"acceptance": "soft", "beta": 1e6})
    error = locked_error(response, "stars.beta")
    assert "stars.acceptance" not in error["message"]


def test_values_equal_to_the_operators_are_not_changes():
    body = {"stars": {"threshold_mode": "relative", "relative_quantile": 0.5, "max_attempts": 4}, "temperature": 0.8}
    response = ask(None, **body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == GUARDED_ANSWER


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"top_p": 0.5}, "top_p"),
        ({"stars": {"safety_floor": -100.0}}, "stars.safety_floor"),
        ({"stars": {"on_reward_error": "fail_open"}}, "stars.on_reward_error"),
        ({"stars": {"fallback": "refuse"}}, "stars.fallback"),
        ({"stars": {"refusal_message": "Sure!"}}, "stars.refusal_message"),
        ({"stars": {"segment_candidates": [1]}}, "stars.segment_candidates"),
    ],
)
def test_every_other_field_is_locked_by_default(body, param):
    locked_error(ask(None, **body), param)


# Cost-lowering fields --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_may_lower_the_operators_limit_but_not_raise_it(name):
    assert ask(None, **{name: 5}).json()["usage"]["completion_tokens"] == 5
    error = locked_error(ask(None, **{name: BASE.max_new_tokens + 1}), name)
    assert f"at most {BASE.max_new_tokens}" in error["message"]
    locked_error(ask(None, stars={"max_new_tokens": 1000}), "stars.max_new_tokens")
    assert ask(OverridePolicy(allowed={"max_new_tokens"}), **{name: 1000}).status_code == 200


def test_a_request_cannot_widen_its_limit_by_sending_it_twice():
    # Both are judged against the operator's value, not against each other.
    response = ask(None, stars={"max_new_tokens": 10}, max_tokens=BASE.max_new_tokens)
    assert response.status_code == 200
    locked_error(ask(None, stars={"max_new_tokens": 10}, max_tokens=BASE.max_new_tokens + 1), "max_tokens")


def test_time_budget_may_only_shorten_the_operators_budget():
    plain = parse_chat_request({"messages": USER, "stars": {"time_budget_s": 30.0}}, BASE)
    assert plain.config.time_budget_s == 30.0  # the operator set none: any budget is shorter
    budgeted = BASE.with_overrides(time_budget_s=5.0)
    assert parse_chat_request({"messages": USER, "stars": {"time_budget_s": 1.0}}, budgeted).config.time_budget_s == 1.0
    with pytest.raises(OpenAIError) as raised:
        parse_chat_request({"messages": USER, "stars": {"time_budget_s": 10.0}}, budgeted)
    assert (raised.value.status, raised.value.code) == (400, "locked_parameter")
    assert raised.value.param == "stars.time_budget_s" and "at most 5.0" in raised.value.message


def test_the_seed_is_always_the_clients_choice():
    request = parse_chat_request({"messages": USER, "stars": {"seed": 3}}, BASE)
    assert request.config.seed == 3
    assert parse_chat_request({"messages": USER, "seed": 9}, BASE).config.seed == 9


def test_unknown_fields_are_still_invalid_config_not_locked():
    response = ask(None, stars={"no_such_field": 1})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_config"
    assert response.json()["error"]["param"] == "stars.no_such_field"


def test_an_unlocked_policy_lets_trusted_callers_change_anything():
    response = ask(OverridePolicy.unlocked(), stars={"acceptance": "soft", "beta": 1e6}, top_p=0.5)
    assert response.status_code == 200 and "FORBIDDEN" in response.json()["choices"][0]["message"]["content"]


def test_the_app_keeps_its_policy():
    policy = OverridePolicy(allowed={"temperature"})
    app = create_app(ServerBackend(script), marker_reward(), BASE, override_policy=policy)
    assert app.state.override_policy is policy
    assert create_app(ServerBackend(script), marker_reward(), BASE).state.override_policy == OverridePolicy()
