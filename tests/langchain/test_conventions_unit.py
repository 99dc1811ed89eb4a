"""STARSChatModel against what LangChain code written for `ChatOpenAI` expects: spec strings for
`backend`/`reward`, `top_p`, a model profile, token usage, OpenAI's finish reasons, and the
per-candidate decisions only on request. A scripted backend stands in for the model (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.factory import _supports_provider_strategy
from langchain_core.messages import AIMessage, HumanMessage
from pydantic import BaseModel

from stars_guard import STARSConfig
from stars_guard.errors import SpecError
from stars_guard.langchain.chat_model import STARSChatModel, openai_finish_reason
from stars_guard.protocols import OpenRequest
from stars_guard.tools import render_tool_call
from tests.doubles import CONFIG, ROUNDS, KeywordReward
from tests.doubles import ScriptedBackend as RequestScriptedBackend
from tests.doubles import SeededBackend as ScriptedBackend

# A scripted piece is one 16-character token: segments of 16 take it whole.
CALL_CONFIG = STARSConfig(threshold_mode="absolute", reward_threshold=0.5, alpha=1.0, segment_size=16)

# Spec strings -----------------------------------------------------------------------------------


def test_a_backend_spec_is_accepted_and_built_on_first_use_only() -> None:
    llm = STARSChatModel(backend="openai:http://127.0.0.1:9?model=served", reward=KeywordReward())
    assert llm.backend == "openai:http://127.0.0.1:9?model=served"  # nothing built, nothing asked yet
    assert llm.model is None and llm.model_label == "openai:http://127.0.0.1:9?model=served"
    backend, _ = llm.resolved_components()
    assert type(backend).__name__ == "OpenAICompletionsBackend"
    assert (backend.base_url, backend.model_name) == ("http://127.0.0.1:9", "served")
    assert llm.resolved_components()[0] is backend  # built once per instance
    assert llm.model == "served"  # known once built


def test_a_reward_spec_is_built_like_the_clis() -> None:
    llm = STARSChatModel(backend=ScriptedBackend(ROUNDS), reward="tei:http://127.0.0.1:9?label=safe")
    _, reward = llm.resolved_components()
    assert type(reward).__name__ == "TEIRewardModel"
    assert llm._identifying_params["reward"] == "tei:http://127.0.0.1:9?label=safe"


def test_local_names_the_embedded_default_without_loading_it() -> None:
    llm = STARSChatModel(backend="local")
    assert llm.model == "SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"backend": "nonsense:x"}, "unknown backend spec 'nonsense:x'; valid backend specs"),
        ({"backend": "openai"}, "needs an argument"),
        (
            {"backend": "openai:http://h?modle=x"},
            r"unknown option 'modle=x' \(valid options: block_size, model, tokenizer\)",
        ),
        ({"reward": "tei"}, "needs an argument"),
        ({"reward": "nope"}, "unknown reward spec"),
    ],
)
def test_a_bad_spec_fails_at_construction_with_the_clis_message(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        STARSChatModel(**fields)


# Sampling parameters ----------------------------------------------------------------------------


def test_top_p_reaches_the_backend_as_a_field_and_per_call() -> None:
    backend = ScriptedBackend(ROUNDS)
    llm = STARSChatModel(backend=backend, reward=KeywordReward(), config=CONFIG, top_p=0.5)
    llm.invoke("hi")
    llm.invoke("hi", top_p=0.25)
    assert [opened["top_p"] for opened in backend.opened] == [0.5, 0.25]
    assert llm._identifying_params["top_p"] == 0.5
    with pytest.raises(ValueError, match="top_p"):
        STARSChatModel(backend=backend, reward=KeywordReward(), top_p=0.0)


# Profile ----------------------------------------------------------------------------------------


class Person(BaseModel):
    name: str
    age: int


def test_the_profile_says_what_the_model_does_and_create_agent_picks_the_tool_strategy() -> None:
    llm = STARSChatModel(backend=ScriptedBackend(ROUNDS), reward=KeywordReward(), model="gpt-4.1")
    assert llm.profile is not None
    assert (llm.profile["tool_calling"], llm.profile["tool_choice"], llm.profile["tool_call_streaming"]) == (
        True,
        True,
        True,
    )
    assert llm.profile["structured_output"] is False
    assert not _supports_provider_strategy(STARSChatModel(backend=ScriptedBackend(ROUNDS), reward=KeywordReward()))


def test_create_agent_with_a_response_format_gets_its_answer_from_a_forced_call() -> None:
    call = render_tool_call("Person", {"name": "Ada", "age": 36})

    def script(request: OpenRequest) -> list[list[str]]:
        return [[call[i : i + 16]] for i in range(0, len(call), 16)] + [["<eos>"]]

    backend = RequestScriptedBackend(script, constraint_support="segments")
    llm = STARSChatModel(backend=backend, reward=KeywordReward(), config=CALL_CONFIG)
    agent = create_agent(llm, tools=[], response_format=Person)
    result = agent.invoke({"messages": [HumanMessage("Ada Lovelace, 36")]})
    assert result["structured_response"] == Person(name="Ada", age=36)
    constraint = backend.opened[0]["constraint"]
    assert (constraint.kind, constraint.tool_names, constraint.required) == ("tool_calls", ("Person",), True)


# Usage, finish reasons, decisions ---------------------------------------------------------------


def test_usage_counts_every_sampled_token_and_itemises_the_rejected_ones() -> None:
    llm = STARSChatModel(backend=ScriptedBackend(ROUNDS), reward=KeywordReward(), config=CONFIG)
    message = llm.invoke("hi")
    stars, usage = message.response_metadata["stars"], message.usage_metadata
    assert usage is not None
    assert usage["output_tokens"] == stars["tokens_sampled"] > stars["tokens_emitted"] > 0
    assert usage["output_token_details"] == {"stars_rejected": stars["tokens_sampled"] - stars["tokens_emitted"]}
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    streamed = [chunk.usage_metadata for chunk in llm.stream("hi", seed=message.response_metadata["seed"])]
    assert [usage for usage in streamed if usage] == [usage]  # once, on the last chunk: merges to the same


@pytest.mark.parametrize(
    ("reason", "calls", "expected"),
    [
        ("stop", False, "stop"),
        ("stop", True, "tool_calls"),
        ("length", False, "length"),
        ("length", True, "length"),
        ("refusal", False, "content_filter"),
        ("time_budget", False, "length"),
    ],
)
def test_finish_reasons_are_openais_words(reason: str, calls: bool, expected: str) -> None:
    assert openai_finish_reason(reason, calls) == expected


def test_an_answer_that_ends_on_its_calls_finishes_with_tool_calls() -> None:
    call = render_tool_call("get_weather", {"city": "Paris"})
    backend = RequestScriptedBackend(
        lambda request: [[call[i : i + 16]] for i in range(0, len(call), 16)] + [["<eos>"]],
        constraint_support="segments",
    )
    llm = STARSChatModel(backend=backend, reward=KeywordReward(), config=CALL_CONFIG)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    message = llm.bind_tools([tool], tool_choice="any").invoke("weather?")
    assert isinstance(message, AIMessage) and message.tool_calls
    assert (message.response_metadata["finish_reason"], message.response_metadata["stars_finish_reason"]) == (
        "tool_calls",
        "stop",
    )


def test_decisions_are_in_the_message_only_when_asked_for() -> None:
    llm = STARSChatModel(backend=ScriptedBackend(ROUNDS), reward=KeywordReward(), config=CONFIG)
    assert "stars_segments" not in llm.invoke("hi").response_metadata
    assert len(llm.invoke("hi", include_segments=True).response_metadata["stars_segments"]) == 5
    asked = STARSChatModel(
        backend=ScriptedBackend(ROUNDS), reward=KeywordReward(), config=CONFIG, include_segments=True
    )
    chunks = list(asked.stream("hi"))
    assert [("stars_segments" in chunk.response_metadata) for chunk in chunks] == [False, False, True]


def test_create_agents_provider_strategy_is_held_without_tools_and_refused_with_them() -> None:
    """A served model named like one LangChain assumes has native structured output (its name
    fallback, whatever the profile says) gets the provider strategy: OpenAI's response_format."""
    answer = '{"name": "Ada", "age": 36}'

    def script(request: OpenRequest) -> list[list[str]]:
        return [[answer[i : i + 16]] for i in range(0, len(answer), 16)] + [["<eos>"]]

    backend = RequestScriptedBackend(script, constraint_support="segments")
    llm = STARSChatModel(backend=backend, reward=KeywordReward(), config=CALL_CONFIG, model="gpt-4.1")
    assert _supports_provider_strategy(llm)  # the name, not the profile
    result = create_agent(llm, tools=[], response_format=Person).invoke({"messages": [HumanMessage("Ada, 36")]})
    assert result["structured_response"] == Person(name="Ada", age=36)
    constraint = backend.opened[0]["constraint"]
    assert constraint.kind == "json_schema" and constraint.schema["properties"].keys() == {"name", "age"}

    def get_age(name: str) -> int:
        """A person's age."""
        return 36

    agent = create_agent(llm, tools=[get_age], response_format=Person)
    with pytest.raises(ValueError, match=r"not both .*ToolStrategy"):
        agent.invoke({"messages": [HumanMessage("Ada, 36")]})


def test_an_openai_response_format_binds_its_schema_or_says_what_is_missing() -> None:
    from stars_guard.langchain.chat_model import _schema_of

    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert _schema_of({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == schema
    assert _schema_of({"type": "json_object"}) == {"type": "object"}
    assert _schema_of({"type": "text"}) is None
    with pytest.raises(ValueError, match=r"needs json_schema\.schema"):
        _schema_of({"type": "json_schema", "json_schema": {"name": "x"}})
