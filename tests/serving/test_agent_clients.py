"""Agents through the guarded service: clients nobody here wrote, at their defaults, against a real
`stars-guard serve` (embedded SmolLM2 and GuardReward) on 127.0.0.1.

The official `openai` client (forced and streamed calls, `parse` with a JSON schema, a tool turn),
LangChain's `ChatOpenAI` (`bind_tools`, `with_structured_output`, `create_agent`) and the OpenAI
Agents SDK (an agent with a function tool). A vetoed call is never streamed or returned.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from stars_guard import STARSConfig
from stars_guard.serving.app import create_app
from tests.doubles import KeywordReward
from tests.serving.doubles import LiveServer, ServeProcess
from tests.serving.test_tools_api import CALLED_AND_ANSWERED

pytestmark = pytest.mark.integration

MODEL = "SmolLM2-135M-Instruct"
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city now.", "parameters": CITY_SCHEMA},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCED: Any = {"type": "function", "function": {"name": "get_weather"}}


class Weather(BaseModel):
    city: str
    sunny: bool


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    args = ["--segment-size", "8", "--candidates", "2", "--max-attempts", "4", "--max-new-tokens", "96"]
    with ServeProcess(*args) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120) as api:
        yield api


def arguments_of(call: Any) -> dict[str, Any]:
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, CITY_SCHEMA)
    return arguments


# The official openai client -------------------------------------------------------------------------


def test_openai_client_forced_call(client):
    answer = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice=FORCED, seed=1)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert arguments_of(call)["city"]


def test_a_budget_too_small_for_the_call_is_a_400_saying_how_many_tokens_it_needs(client):
    with pytest.raises(openai.BadRequestError) as small:
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice=FORCED, max_tokens=4
        )
    assert small.value.body["param"] == "max_tokens" and small.value.code == "max_tokens_too_small"
    assert "raise max_tokens to at least" in small.value.message


def test_openai_client_streamed_call_arrives_whole_and_usage_comes_last(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        seed=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or ()]
    assert calls
    for call in calls:  # every delta is a whole call: its arguments parse on their own
        assert call.function.name == "get_weather" and arguments_of(call)
    assert sorted(call.index for call in calls) == list(range(len(calls)))
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_openai_client_parses_a_json_schema_answer(client):
    answer = client.chat.completions.parse(model=MODEL, messages=ASK, response_format=Weather, seed=3)
    parsed = answer.choices[0].message.parsed
    assert isinstance(parsed, Weather) and parsed.city


def test_openai_client_sends_a_tool_result_back(client):
    answer = client.chat.completions.create(
        model=MODEL, messages=CALLED_AND_ANSWERED, tools=[WEATHER_TOOL], seed=4, max_tokens=32
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls


def test_constrained_requests_ran_in_lockstep_rounds(server, client):
    """Tools and JSON answers keep their place in the shared drafting rounds (each under its own grammar)."""
    client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice=FORCED, seed=1)
    lockstep = httpx.get(f"{server.url}/health").json()["lockstep"]
    assert lockstep is not None and lockstep["rounds"] > 0


# LangChain's ChatOpenAI and create_agent -------------------------------------------------------------


def get_weather(city: str) -> str:
    """The weather in a city now."""
    return f"Sunny, 21 C in {city}"


@pytest.fixture(scope="module")
def chat_openai(server: ServeProcess) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=f"{server.url}/v1", api_key="unused", model=MODEL, max_retries=0, seed=5)


def test_chat_openai_binds_a_forced_tool_and_streams_it(chat_openai):
    message = chat_openai.bind_tools([get_weather], tool_choice="get_weather").invoke("What is the weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    chunks = list(chat_openai.bind_tools([get_weather], tool_choice="any").stream("What is the weather in Rome?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.tool_calls and all(call["name"] == "get_weather" for call in merged.tool_calls)


def test_chat_openai_structured_output(chat_openai):
    answer = chat_openai.with_structured_output(Weather).invoke("Is it sunny in Paris?")
    assert isinstance(answer, Weather) and answer.city


def test_create_agent_runs_a_tool_through_the_service(chat_openai):
    from langchain.agents import create_agent
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.messages import ToolMessage

    class CallFirst(AgentMiddleware):
        """Forces the tool on the first model call (the 135M model does not call tools under 'auto')."""

        def wrap_model_call(self, request: Any, handler: Any) -> Any:
            if not any(isinstance(message, ToolMessage) for message in request.messages):
                request = request.override(tool_choice="get_weather")
            return handler(request)

    agent = create_agent(chat_openai, tools=[get_weather], middleware=[CallFirst()])
    result = agent.invoke({"messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
    tool_results = [message for message in result["messages"] if isinstance(message, ToolMessage)]
    assert tool_results and "Sunny, 21 C" in tool_results[0].content
    assert result["messages"][-1].type == "ai"  # the loop ended with an answer after the tool's result


# The OpenAI Agents SDK ---------------------------------------------------------------------------------


def test_agents_sdk_runs_a_function_tool(server):
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # no trace export: nothing leaves this machine
    asked: list[str] = []

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city now."""
        asked.append(city)
        return f"Sunny, 21 C in {city}"

    api = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    agent = Agent(
        name="weather",
        instructions="Answer questions about the weather.",
        model=OpenAIChatCompletionsModel(model=MODEL, openai_client=api),
        tools=[weather],
        model_settings=ModelSettings(tool_choice="required"),
    )
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)
    assert asked and all(isinstance(city, str) and city for city in asked)
    assert isinstance(result.final_output, str)


# A vetoed call is never sent -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def veto_client(backend: Any) -> Iterator[openai.OpenAI]:
    """The real model behind a reward that vetoes any answer naming Paris (floor 0.5 on 0/1 scores)."""
    config = STARSConfig(segment_size=8, candidates_per_round=2, max_attempts=4, max_new_tokens=96, safety_floor=0.5)
    app = create_app(backend, KeywordReward("Paris"), config, lockstep=False)
    with LiveServer(app) as live, openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0) as api:
        yield api


def test_a_vetoed_call_is_never_streamed_or_returned(veto_client):
    answer = veto_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice=FORCED, seed=6
    )
    assert answer.model_extra["stars"]["candidates_vetoed"] > 0  # the model did write Paris into a call
    assert "Paris" not in answer.model_dump_json()
    stream = veto_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice=FORCED, seed=6, stream=True
    )
    chunks = list(stream)
    assert "Paris" not in "".join(chunk.model_dump_json() for chunk in chunks)
    assert chunks[-1].model_extra["stars"]["candidates_vetoed"] > 0
