"""The chat service's HTTP contract over scripted models: schemas, validation, errors, auth, metrics.

Everything here runs in process through starlette's TestClient; behaviour that needs a real
socket (queueing, deadlines, disconnects) is in test_runtime.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from stars_guard.config import STARSConfig
from stars_guard.errors import BackendError, ContextWindowExceededError
from stars_guard.overrides import OverridePolicy
from stars_guard.serving.app import create_app
from stars_guard.serving.schema import parse_chat_request
from stars_guard.stats import STATS_KEYS
from tests.serving.doubles import EOS, FailingReward, ServerBackend, marker_reward, test_config

PROMPT = "How do I keep my houseplants alive while I am away? zebra-quartz-7"
USER = [{"role": "user", "content": PROMPT}]


def rejecting_script(_: Any) -> list[list[str]]:
    """Every round: a candidate carrying the marker first, a clean one second."""
    return [
        ["FORBIDDEN one ", "Water them. "],
        ["FORBIDDEN two ", "Then relax." + EOS],
    ]


# The validation tests send these with bad values: allowed, so they reach validation (locks: test_overrides.py).
VALIDATED = OverridePolicy(allowed={"segment_size", "temperature", "top_p"})


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(ServerBackend(rejecting_script), marker_reward(), test_config(), override_policy=VALIDATED)
    with TestClient(app) as test_client:
        yield test_client


def post(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": "scripted-lm", "messages": USER, **body})


def sse_events(text: str) -> list[Any]:
    """The `data:` payloads of an event stream, JSON-decoded except the final `[DONE]`."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def assert_error(response: Any, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


# Answers ------------------------------------------------------------------------------------------


def test_non_streaming_completion_has_openai_shape_usage_and_stars(client):
    response = post(client, seed=11, max_tokens=40)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-") and response.headers["x-request-id"] == body["id"]
    assert body["object"] == "chat.completion" and isinstance(body["created"], int)
    assert body["model"] == "scripted-lm"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Water them. Then relax."}
    assert choice["finish_reason"] == "stop"
    stars = body["stars"]
    assert list(stars) == [*STATS_KEYS, "finish_reason", "seed"]
    assert stars["finish_reason"] == "stop" and stars["seed"] == 11
    assert stars["candidates_rejected"] == 2 and stars["candidates_sampled"] == 4
    usage = body["usage"]
    assert usage["completion_tokens"] == stars["tokens_emitted"] == len("Water them. Then relax.")
    assert usage["prompt_tokens"] == stars["prompt_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_sends_accepted_text_only_and_ends_with_usage_stars_and_done(client):
    response = post(client, stream=True, seed=11)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "FORBIDDEN" not in response.text  # rejected candidates never reach the client
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    middle = [chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:-1]]
    assert middle == ["Water them. ", "Then relax."]  # one chunk per accepted segment
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])
    last = chunks[-1]
    assert last["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    assert last["usage"]["completion_tokens"] == len("Water them. Then relax.")
    assert last["stars"]["candidates_rejected"] == 2 and last["stars"]["seed"] == 11
    # Same seed, same script: the stream concatenates to the non-streaming answer.
    assert "".join(middle) == post(client, seed=11).json()["choices"][0]["message"]["content"]


def test_refusal_maps_to_content_filter():
    backend = ServerBackend(lambda _: [["FORBIDDEN a ", "FORBIDDEN b "]] * 2)
    app = create_app(backend, marker_reward(), test_config(safety_floor=0.5, refusal_message="No."))
    with TestClient(app) as client:
        body = post(client).json()
    assert body["choices"][0]["message"]["content"] == "No."
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["stars"]["finish_reason"] == "refusal" and body["stars"]["refused"] is True


def test_openai_parameters_reach_the_engine():
    backend = ServerBackend(lambda _: [["abcdefgh"]] * 8)
    app = create_app(backend, marker_reward(), test_config(), override_policy=VALIDATED)
    with TestClient(app) as client:
        body = post(
            client,
            max_tokens=5,
            temperature=0.3,
            top_p=0.5,
            seed=42,
            stars={"segment_size": 4},
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]},
            ],
        ).json()
        assert body["choices"][0]["message"]["content"] == "abcda"  # segments of 4, cut at max_tokens=5
        assert body["choices"][0]["finish_reason"] == "length"
        opened = backend.opened[-1]
        assert opened["max_new_tokens"] == 5 and opened["temperature"] == 0.3 and opened["top_p"] == 0.5
        assert opened["seed"] == 42
        # A client's system turn is demoted to user text by default (`--client-system demote`).
        assert [(m.role, m.content) for m in opened["messages"]] == [("user", "Be brief.\n\npart one\ntwo")]
        # max_completion_tokens wins over max_tokens; stop strings end the answer and are not emitted.
        body = post(client, max_tokens=50, max_completion_tokens=3).json()
        assert body["usage"]["completion_tokens"] == 3
        body = post(client, stop=["efg"]).json()
        assert body["choices"][0]["message"]["content"] == "abcd"
        assert body["choices"][0]["finish_reason"] == "stop"


def test_models_endpoints(client):
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == ["scripted-lm"]
    assert client.get("/v1/models/scripted-lm").json()["id"] == "scripted-lm"
    assert_error(client.get("/v1/models/other"), 404, code="model_not_found")


def test_a_seed_is_drawn_and_reported_when_the_request_has_none(client):
    seed = post(client).json()["stars"]["seed"]
    assert isinstance(seed, int) and seed >= 0


# Validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": ["hello"]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "   "}]}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "messages"),
        ({"messages": USER, "n": 2}, "n"),
        ({"messages": USER, "stream": "yes"}, "stream"),
        ({"messages": USER, "temperature": "hot"}, "temperature"),
        ({"messages": USER, "temperature": 9}, "temperature"),
        ({"messages": USER, "top_p": 0}, "top_p"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "max_tokens": 2.5}, "max_tokens"),
        ({"messages": USER, "max_completion_tokens": True}, "max_completion_tokens"),
        ({"messages": USER, "seed": -1}, "seed"),
        ({"messages": USER, "stop": 5}, "stop"),
        ({"messages": USER, "stop": ["ok", ""]}, "stop"),
        ({"messages": USER, "model": 7}, "model"),
        ({"messages": USER, "tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type"),
        ({"messages": USER, "tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"messages": USER, "tool_choice": "required"}, "tool_choice"),
        ({"messages": USER, "logprobs": True}, "logprobs"),
        ({"messages": USER, "logit_bias": {"50256": -100}}, "logit_bias"),
        ({"messages": USER, "frequency_penalty": 0.5}, "frequency_penalty"),
        ({"messages": USER, "functions": [{"name": "f"}]}, "functions"),
        ({"messages": USER, "top_k": 5}, "top_k"),
        ({"messages": USER, "response_format": {"type": "xml"}}, "response_format.type"),
        ({"messages": USER, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"messages": USER, "stars": [1]}, "stars"),
        ({"messages": USER, "stars": {"segment_size": 0}}, "stars.segment_size"),
        ({"messages": USER, "stars": {"no_such_field": 1}}, "stars.no_such_field"),
        ({"messages": USER, "stars": {"on_reward_error": "fail_open"}}, "stars.on_reward_error"),
        ({"messages": USER, "stars": {"safety_floor": -100.0}}, "stars.safety_floor"),
    ],
)
def test_bad_requests_get_openai_400s_naming_the_parameter(client, body, param):
    error = assert_error(client.post("/v1/chat/completions", json=body), 400, param=param)
    assert error["type"] == "invalid_request_error"
    if param.startswith("stars."):
        assert param.removeprefix("stars.") in error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'{"messages": NaN}', b"\xff\xfe"])
def test_malformed_bodies_are_400(client, raw):
    response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400)


def test_parse_keeps_policy_fields_the_operator_set_and_allows_the_same_value():
    base = STARSConfig(safety_floor=0.1)
    request = parse_chat_request({"messages": USER, "stars": {"safety_floor": 0.1, "segment_size": 8}}, base)
    assert request.config.safety_floor == 0.1 and request.config.segment_size == 8
    unlocked = parse_chat_request(
        {"messages": USER, "stars": {"safety_floor": 0.0}}, base, policy=OverridePolicy.unlocked()
    )
    assert unlocked.config.safety_floor == 0.0


def test_body_size_limit_is_413_with_or_without_content_length():
    app = create_app(ServerBackend(), marker_reward(), test_config(), max_body_bytes=1000)
    with TestClient(app) as client:
        big = {"messages": [{"role": "user", "content": "x" * 2000}]}
        assert_error(client.post("/v1/chat/completions", json=big), 413, code="request_too_large")
        chunked = client.post("/v1/chat/completions", content=iter([json.dumps(big).encode()[:600]] * 2))
        assert_error(chunked, 413, code="request_too_large")
        assert post(client).status_code == 200  # small bodies still pass


def test_unknown_paths_and_methods_get_openai_errors(client):
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)


# Auth ---------------------------------------------------------------------------------------------------


def test_api_key_guards_everything_but_health():
    app = create_app(ServerBackend(), marker_reward(), test_config(), api_key="s3cret")
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        for path in ("/v1/models", "/metrics"):
            error = assert_error(client.get(path), 401, code="invalid_api_key")
            assert error["type"] == "invalid_request_error"
        missing = post(client)
        assert_error(missing, 401, code="invalid_api_key")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(post_with(client, "Bearer wrong"), 401)
        assert_error(post_with(client, "Basic s3cret"), 401)
        assert post_with(client, "Bearer s3cret").status_code == 200
        assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def post_with(client: TestClient, authorization: str) -> Any:
    return client.post("/v1/chat/completions", json={"messages": USER}, headers={"Authorization": authorization})


# Failures -----------------------------------------------------------------------------------------------


def test_context_window_exceeded_is_400_context_length_exceeded():
    backend = ServerBackend(open_error=ContextWindowExceededError(5000, 256, 2048))
    with TestClient(create_app(backend, marker_reward(), test_config())) as client:
        for stream in (False, True):
            error = assert_error(post(client, stream=stream), 400, param="messages", code="context_length_exceeded")
            assert "2048" in error["message"]


def test_backend_failure_is_502_for_plain_and_streaming_requests():
    backend = ServerBackend(open_error=BackendError("vLLM at http://10.0.0.9:8000 answered 500"))
    with TestClient(create_app(backend, marker_reward(), test_config())) as client:
        for stream in (False, True):
            error = assert_error(post(client, stream=stream), 502, code="backend_error")
            assert error["type"] == "server_error" and "10.0.0.9" not in error["message"]
        assert client.get("/health").json()["failed"] == 2


def test_reward_failure_under_fail_closed_is_502_and_the_server_stays_up():
    reward = FailingReward(fail_at=1)
    with TestClient(create_app(ServerBackend(), reward, test_config())) as client:
        error = assert_error(post(client), 502, code="reward_error")
        assert "10.0.0.7" not in error["message"]  # internal addresses stay in the log
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["in_flight"] == 0
        reward.fail_at = 10**9  # the reward service is back
        assert post(client).status_code == 200


def test_reward_failure_mid_stream_sends_an_error_event_then_done():
    reward = FailingReward(fail_at=3)  # call 1: R(prompt, ''), call 2: segment 1, call 3: segment 2
    with TestClient(create_app(ServerBackend(), reward, test_config())) as client:
        response = post(client, stream=True)
        assert response.status_code == 200
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        assert events[1]["choices"][0]["delta"]["content"] == "Hello there, "
        assert events[-2]["error"]["code"] == "reward_error"
        assert events[-2]["error"]["type"] == "server_error"
        assert all("usage" not in event for event in events[:-1])
        assert client.get("/health").status_code == 200


# Statistics ---------------------------------------------------------------------------------------------


class Recorder:
    """A StatsObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def request_started(self, run: Any) -> None:
        self.calls.append(("started", run))

    def decision(self, run: Any, decision: Any) -> None:
        self.calls.append(("decision", decision))

    def segment_settled(self, run: Any, segment: Any) -> None:
        self.calls.append(("segment", segment))

    def request_finished(self, run: Any, record: Any) -> None:
        self.calls.append(("finished", record))

    def request_failed(self, run: Any, error: Any) -> None:
        self.calls.append(("failed", error))


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_observers_and_extra_routes_see_the_same_requests():
    recorder = Recorder()
    extra = [Route("/dashboard", lambda _: PlainTextResponse("dash"), methods=["GET"])]
    app = create_app(
        ServerBackend(rejecting_script), marker_reward(), test_config(), observers=[recorder], extra_routes=extra
    )
    with TestClient(app) as client:
        stars = [post(client).json()["stars"], sse_events(post(client, stream=True).text)[-2]["stars"]]
        assert client.get("/dashboard").text == "dash"
        text = client.get("/metrics").text
    values = metric_values(text)
    assert values[("stars_requests_total", (("outcome", "stop"),))] == 2
    assert values[("stars_candidates_total", ())] == sum(s["candidates_sampled"] for s in stars)
    assert values[("stars_segments_total", (("outcome", "rejected"),))] == sum(s["candidates_rejected"] for s in stars)
    assert values[("stars_segments_total", (("outcome", "accepted"),))] == sum(s["segments_accepted"] for s in stars)
    assert values[("stars_tokens_total", (("kind", "emitted"),))] == sum(s["tokens_emitted"] for s in stars)
    assert values[("stars_llm_call_seconds_count", ())] == sum(s["llm_calls"] for s in stars)
    assert values[("stars_reward_call_seconds_count", ())] == sum(s["reward_calls"] for s in stars)
    assert values[("stars_server_in_flight", ())] == 0
    assert PROMPT not in text and "FORBIDDEN" not in text and "Water" not in text
    assert [name for name, _ in recorder.calls].count("finished") == 2
    snapshot = app.state.stats.snapshot()
    assert snapshot["candidates"]["rejected"] == 4 and snapshot["requests"]["finished"] == 2
    assert app.state.exporter is not None and app.state.service.counts["completed"] == 2


def test_default_logs_carry_no_prompt_or_answer_text(client, caplog):
    with caplog.at_level(logging.DEBUG, logger="stars_guard"):
        response = post(client)
        post(client, n=3)
    request_id = response.json()["id"]
    assert request_id in caplog.text and "status=200" in caplog.text and "status=400" in caplog.text
    assert "completion_tokens=" in caplog.text and "latency=" in caplog.text
    assert "zebra-quartz-7" not in caplog.text and "Water" not in caplog.text
