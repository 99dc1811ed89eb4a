"""Client mistakes are 400s, never 500s, and never count as server errors.

Regressions: a seed of 2**64 and a lone surrogate ("\\ud800" in JSON) were 500s; a prompt too long
for the context window was a 400 but counted as `outcome="error"` and in `/health`'s `failed`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from stars_guard.errors import BackendError, ContextWindowExceededError
from stars_guard.overrides import MAX_SEED, OverridePolicy
from stars_guard.serving.app import create_app
from tests.serving.doubles import ServerBackend, marker_reward, test_config
from tests.serving.test_api import metric_values

USER = [{"role": "user", "content": "Tell me something nice."}]


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(ServerBackend(), marker_reward(), test_config())) as test_client:
        yield test_client


def send(client: TestClient, body: dict[str, Any]) -> Any:
    """`body` as JSON with every non-ASCII character escaped, as a client encoding lone surrogates sends it."""
    raw = json.dumps({"messages": USER, **body}).encode("ascii")
    return client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})


def assert_400(response: Any, param: str | None) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    return error


# Seeds ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [2**64, 2**63, MAX_SEED + 1, -1, 1.5, 2.0, "3", True, [1]])
@pytest.mark.parametrize("where", ["seed", "stars.seed"])
def test_a_seed_out_of_range_or_not_an_integer_is_a_400_naming_it(client, seed, where):
    body = {"seed": seed} if where == "seed" else {"stars": {"seed": seed}}
    error = assert_400(send(client, body), where)
    assert where in error["message"]


@pytest.mark.parametrize("seed", [0, 2**31, MAX_SEED])
def test_every_seed_in_range_is_answered_and_reported(client, seed):
    response = send(client, {"seed": seed})
    assert response.status_code == 200, response.text
    assert response.json()["stars"]["seed"] == seed


# Lone surrogates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi \ud800"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
            "messages[0].content[0].text",
        ),
        ({"messages": [{"role": "system", "content": "\ud800"}, *USER]}, "messages[0].content"),
        ({"stop": "\ud800"}, "stop"),
        ({"stop": ["ok", "\ud800"]}, "stop[1]"),
        ({"model": "\ud800"}, "model"),
        ({"user": "\ud800"}, "user"),
        ({"stars": {"refusal_message": "\ud800"}}, "stars.refusal_message"),
        ({"metadata": {"\ud800": 1}}, "metadata"),
        ({"\ud800": 1}, None),
    ],
)
def test_a_lone_surrogate_anywhere_is_a_400_naming_where(client, body, param):
    error = assert_400(send(client, body), param)
    assert error["code"] == "invalid_text" and "surrogate" in error["message"]


def test_a_surrogate_pair_is_ordinary_text(client):
    body = {"messages": [{"role": "user", "content": "A plant for my desk? \ud83c\udf35"}], "stop": "\ud83c\udf35"}
    assert send(client, body).status_code == 200


def test_a_body_nested_deeper_than_the_parser_allows_is_a_400(client):
    raw = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_a_user_that_is_not_a_string_is_a_400(client):
    assert_400(send(client, {"user": 7}), "user")
    assert send(client, {"user": "customer-42"}).status_code == 200


# Outcomes ---------------------------------------------------------------------------------------------------


def test_context_length_400s_are_counted_as_invalid_not_as_errors():
    backend = ServerBackend(open_error=ContextWindowExceededError(5000, 64, 2048))
    app = create_app(backend, marker_reward(), test_config(), override_policy=OverridePolicy())
    with TestClient(app) as client:
        for stream in (False, True):
            response = client.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
            assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
        health = client.get("/health").json()
        metrics = metric_values(client.get("/metrics").text)
    assert (health["failed"], health["invalid"], health["completed"]) == (0, 2, 0)
    assert metrics[("stars_requests_total", (("outcome", "invalid"),))] == 2
    assert ("stars_requests_total", (("outcome", "error"),)) not in metrics
    assert app.state.stats.snapshot()["requests"]["by_outcome"] == {"invalid": 2}


def test_backend_failures_still_count_as_errors():
    backend = ServerBackend(open_error=BackendError("vLLM at http://10.0.0.9:8000 answered 500"))
    with TestClient(create_app(backend, marker_reward(), test_config())) as client:
        assert client.post("/v1/chat/completions", json={"messages": USER}).status_code == 502
        health = client.get("/health").json()
        metrics = metric_values(client.get("/metrics").text)
    assert (health["failed"], health["invalid"]) == (1, 0)
    assert metrics[("stars_requests_total", (("outcome", "error"),))] == 1


def test_a_null_seed_is_no_seed(client):
    response = send(client, {"seed": None, "stars": {"seed": None}})
    assert response.status_code == 200 and isinstance(response.json()["stars"]["seed"], int)
