"""Tools and JSON answers in the service, in OpenAI's shapes (scripted backend: the logic only).

What a client sends (tools, tool_choice, tool turns, response_format) must reach the engine as the
constraint and turns the library drafts under; what comes back must be OpenAI's `tool_calls`, a
call sent only whole and never one the guard rejected. The real model and real clients run the
same paths in test_agent_clients.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from stars_guard.protocols import OpenRequest
from stars_guard.serving.app import create_app
from stars_guard.tools import render_tool_call
from tests.doubles import EOS, ScriptedBackend, marker_reward
from tests.serving.doubles import test_config
from tests.serving.test_api import assert_error, sse_events

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
# A conversation in which the weather was asked for, called, and the tool answered.
CALLED_AND_ANSWERED = [
    *USER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
]
GOOD_CALL = render_tool_call("get_weather", {"city": "Paris"})
BAD_CALL = render_tool_call("get_weather", {"city": "FORBIDDEN"})


def _call_turn(arguments: str) -> dict[str, Any]:
    """An earlier assistant turn with one call whose arguments are `arguments` (JSON text)."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def call_script(request: OpenRequest) -> list[list[str]]:
    """Round 1: a call the reward rejects, then a good one; it ends the answer."""
    return [[BAD_CALL, GOOD_CALL + EOS]]


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend(call_script, constraint_support="segments")


@pytest.fixture
def client(backend: ScriptedBackend) -> Any:
    app = create_app(backend, marker_reward(), test_config(segment_size=128, max_new_tokens=256), lockstep=False)
    with TestClient(app) as test_client:
        yield test_client


def post(client: Any, **body: Any) -> Any:
    return client.post("/v1/chat/completions", json={"messages": USER, "seed": 1, **body})


def test_a_forced_call_comes_back_whole_as_openai_tool_calls(client, backend):
    body = post(client, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}).json()
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert "FORBIDDEN" not in json.dumps(body)  # the rejected call is never returned
    constraint = backend.opened[-1]["constraint"]
    assert constraint.kind == "tool_calls" and constraint.required and constraint.tool_names == ("get_weather",)
    assert not constraint.parallel_tool_calls  # a named function: exactly one call


def test_a_streamed_call_is_one_whole_delta_and_a_rejected_one_never_streams(client):
    response = post(client, tools=[WEATHER], tool_choice="required", stream=True)
    assert response.status_code == 200
    assert "FORBIDDEN" not in response.text
    chunks = sse_events(response.text)[:-1]
    call_deltas = [
        chunk["choices"][0]["delta"]["tool_calls"] for chunk in chunks if "tool_calls" in chunk["choices"][0]["delta"]
    ]
    (entries,) = call_deltas  # one chunk carries the call, arguments complete
    (entry,) = entries
    assert entry["index"] == 0 and entry["function"]["name"] == "get_weather"
    assert json.loads(entry["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(chunk["choices"][0]["delta"].get("content") for chunk in chunks)


def test_tool_turns_reach_the_engine_as_calls_and_results(client, backend):
    backend.script = lambda request: [["It is sunny in Paris." + EOS]]
    body = client.post(
        "/v1/chat/completions", json={"messages": CALLED_AND_ANSWERED, "tools": [WEATHER], "seed": 1}
    ).json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "It is sunny in Paris."}
    assert body["choices"][0]["finish_reason"] == "stop"
    turns = backend.opened[-1]["messages"]
    assert [turn.role for turn in turns] == ["user", "assistant", "tool"]
    assert turns[1].tool_calls[0].name == "get_weather" and dict(turns[1].tool_calls[0].arguments) == {"city": "Paris"}
    assert (turns[2].tool_call_id, turns[2].content) == ("call_1", "Sunny, 21 C")


def test_a_block_that_is_not_a_call_is_never_sent_as_one(client, backend):
    backend.support = "none"  # drafted free under 'auto': the answer is read for calls
    backend.script = lambda request: [['Let me check. <tool_call>\n{"name": "launch"}\n</tool_call>' + EOS]]
    body = post(client, tools=[WEATHER]).json()
    message = body["choices"][0]["message"]
    assert "tool_calls" not in message and message["content"] == "Let me check. "
    assert body["choices"][0]["finish_reason"] == "stop"
    (invalid,) = body["stars"]["invalid_tool_calls"]
    assert invalid["name"] == "launch" and "not a bound tool" in invalid["error"]


def test_json_formats_draft_under_their_schema(client, backend):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    backend.script = lambda request: [['{"city": "Paris"}' + EOS]]
    body = post(client, response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}).json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"city": "Paris"}
    constraint = backend.opened[-1]["constraint"]
    assert (constraint.kind, dict(constraint.schema)) == ("json_schema", schema)
    post(client, response_format={"type": "json_object"})
    assert dict(backend.opened[-1]["constraint"].schema) == {"type": "object"}


def test_a_backend_without_a_grammar_refuses_a_forced_call_up_front(client, backend):
    backend.support = "none"
    error = assert_error(post(client, tools=[WEATHER], tool_choice="required"), 400)
    assert "cannot draft under a forced tool call" in error["message"]
    assert not backend.generations  # nothing was drafted


def test_tool_choice_none_drafts_free_text(client, backend):
    backend.script = lambda request: [["Sunny, probably." + EOS]]
    body = post(client, tools=[WEATHER], tool_choice="none").json()
    assert body["choices"][0]["message"]["content"] == "Sunny, probably."
    assert backend.opened[-1]["constraint"] is None


def test_include_usage_sends_openais_usage_chunk_last(client, backend):
    backend.script = lambda request: [["Sunny." + EOS]]
    response = post(client, stream=True, stream_options={"include_usage": True})
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    usage_chunk, finish_chunk = events[-2], events[-3]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == len("Sunny.")
    assert finish_chunk["choices"][0]["finish_reason"] == "stop" and finish_chunk["usage"] is None
    without = sse_events(post(client, stream=True).text)
    assert without[-2]["choices"] and without[-2]["usage"]["completion_tokens"] == len("Sunny.")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stars": {"guard_tool_calls": "off"}}, "stars.guard_tool_calls"),
        ({"stars": {"safety_floor": None}}, "stars.safety_floor"),
    ],
)
def test_a_client_cannot_loosen_how_calls_are_judged(client, extra, param):
    assert_error(
        post(client, tools=[WEATHER], tool_choice="required", **extra), 400, param=param, code="locked_parameter"
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"messages": [*USER, {"role": "tool", "tool_call_id": "x", "content": "r"}]}, "messages[1].tool_call_id"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
        ({"stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream: nothing to send it on
        (
            {"messages": [*USER, _call_turn("[" * 5000 + "]" * 5000), *USER]},
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"messages": [*USER, _call_turn('{"x": NaN}'), *USER]}, "messages[1].tool_calls[0].function.arguments"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"store": True}, "store"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
    ],
)
def test_what_the_service_would_not_honour_is_a_400_naming_it(client, body, param):
    error = assert_error(client.post("/v1/chat/completions", json={"messages": USER, **body}), 400, param=param)
    assert error["type"] == "invalid_request_error"


def test_parameters_that_ask_for_nothing_are_accepted(client, backend):
    backend.script = lambda request: [["Sunny." + EOS]]
    neutral = {"frequency_penalty": 0.0, "presence_penalty": 0, "logit_bias": {}, "logprobs": False, "store": False}
    response = post(client, **neutral, user="u-1", n=1, parallel_tool_calls=True, tools=[WEATHER], tool_choice="none")
    assert response.status_code == 200, response.text
