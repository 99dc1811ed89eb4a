"""`bind_tools` and `with_structured_output` on a scripted backend: the LangChain shapes of calls.

The scripted backend stands in for a grammar (its script is what a constrained draft would be);
the real constrained drafting is tested in tests/adapters/test_constrained_drafting.py and, end
to end with LangChain, in test_tools_integration.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from stars_guard import STARSConfig
from stars_guard.langchain.chat_model import STARSChatModel
from stars_guard.tools import plain_turns, render_tool_call
from tests.doubles import KeywordReward, ScriptedBackend

CONFIG = STARSConfig(threshold_mode="absolute", reward_threshold=0.5, alpha=1.0, segment_size=16)


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return f"sunny in {city}"


class Person(BaseModel):
    """A person."""

    name: str = Field(description="their name")
    age: int


class PersonDict(TypedDict):
    name: str
    age: int


def pieces(text: str, size: int = 16) -> list[list[str]]:
    return [[text[start : start + size]] for start in range(0, len(text), size)] + [["<eos>"]]


def model(answer: str, support: str = "segments") -> tuple[STARSChatModel, ScriptedBackend]:
    backend = ScriptedBackend(pieces(answer), constraint_support=support)
    return STARSChatModel(backend=backend, reward=KeywordReward(), config=CONFIG), backend


CALL = render_tool_call("get_weather", {"city": "Paris"})


def test_a_forced_call_comes_back_as_a_tool_call_with_an_id():
    llm, backend = model(CALL)
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("weather in Paris?")
    assert message.content == ""
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert message.tool_calls[0]["id"].startswith("call_")
    constraint = backend.opened[0]["constraint"]
    assert constraint.required and constraint.tool_names == ("get_weather",)
    (system, _) = plain_turns(backend.opened[0]["messages"], constraint)  # what a template without tools gets
    assert system.role == "system" and '"name": "get_weather"' in system.content


def test_streamed_calls_arrive_whole_and_merge_to_the_invoked_message():
    answer = "Checking. " + CALL + " and " + render_tool_call("get_weather", {"city": "Oslo"})
    llm, _ = model(answer)
    bound = llm.bind_tools([get_weather])
    chunks = list(bound.stream("weather?"))
    with_calls = [chunk for chunk in chunks if chunk.tool_call_chunks]
    assert [len(chunk.tool_call_chunks) for chunk in with_calls] == [1, 1]
    for chunk in with_calls:  # whole JSON arguments in one chunk, never a partial call
        assert chunk.tool_call_chunks[0]["args"] in ('{"city": "Paris"}', '{"city": "Oslo"}')
    merged: AIMessageChunk = sum(chunks[1:], chunks[0])  # type: ignore[assignment]
    assert merged.content == "Checking.  and "
    assert [c["args"]["city"] for c in merged.tool_calls] == ["Paris", "Oslo"]
    invoked = model(answer)[0].bind_tools([get_weather]).invoke("weather?")
    assert invoked.content == merged.content
    assert [(c["name"], c["args"]) for c in invoked.tool_calls] == [(c["name"], c["args"]) for c in merged.tool_calls]


def test_a_malformed_call_from_free_drafting_is_reported_never_called():
    answer = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    llm, backend = model(answer, support="none")  # no grammar: 'auto' drafts free
    message = llm.bind_tools([get_weather]).invoke("hi")
    assert message.tool_calls == [] and message.invalid_tool_calls == []
    assert backend.opened[0]["constraint"] is None
    invalid = message.response_metadata["stars_invalid_tool_calls"]
    assert invalid[0]["name"] == "rm_rf" and "not a bound tool" in invalid[0]["error"]


@pytest.mark.parametrize("choice", ["any", "required", True, {"type": "function", "function": {"name": "get_weather"}}])
def test_forcing_forms_all_require_a_call(choice: Any):
    llm, backend = model(CALL)
    llm.bind_tools([get_weather], tool_choice=choice).invoke("weather?")
    assert backend.opened[0]["constraint"].required


def test_tool_choice_none_binds_no_constraint_and_a_bad_choice_says_why():
    llm, backend = model("It is sunny.")
    assert llm.bind_tools([get_weather], tool_choice="none").invoke("weather?").content == "It is sunny."
    assert backend.opened[0]["constraint"] is None
    with pytest.raises(ValueError, match="names no bound tool; bound tools: get_weather"):
        llm.bind_tools([get_weather], tool_choice="delete_all")
    other = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    llm, backend = model(CALL)
    llm.bind_tools([get_weather, Person, Person.model_json_schema(), other], tool_choice="any").invoke("hi")
    constraint = backend.opened[0]["constraint"]
    assert constraint.tool_names == ("get_weather", "Person")  # a name bound twice is one tool: the first
    assert "city" in constraint.tools[0].parameters["properties"]


def test_every_tool_form_is_accepted():
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    openai = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    llm, backend = model("ok")
    llm.bind_tools([get_weather, Person, add, openai]).invoke("hi")
    assert backend.opened[0]["constraint"].tool_names == ("get_weather", "Person", "add", "lookup")


@pytest.mark.parametrize("schema", [Person, PersonDict, Person.model_json_schema()])
def test_structured_output_json_schema_parses_each_schema_form(schema: Any):
    llm, backend = model('{"name": "Ada", "age": 36}')
    result = llm.with_structured_output(schema).invoke("who?")
    expected = {"name": "Ada", "age": 36}
    assert (result.model_dump() if isinstance(result, BaseModel) else result) == expected
    constraint = backend.opened[0]["constraint"]
    assert constraint.kind == "json_schema" and set(constraint.schema["properties"]) == {"name", "age"}


def test_structured_output_function_calling_and_include_raw():
    llm, _ = model(render_tool_call("Person", {"name": "Ada", "age": 36}))
    result = llm.with_structured_output(Person, method="function_calling", include_raw=True).invoke("who?")
    assert result["parsed"] == Person(name="Ada", age=36) and result["parsing_error"] is None
    assert result["raw"].tool_calls[0]["name"] == "Person"
    llm, _ = model('{"name": "Ada"}')  # age missing: a parsing error, kept beside the raw message
    failed = llm.with_structured_output(Person, include_raw=True).invoke("who?")
    assert failed["parsed"] is None and failed["parsing_error"] is not None


def test_json_mode_returns_a_dict_and_needs_no_schema():
    llm, backend = model('{"any": [1, 2]}')
    assert llm.with_structured_output(method="json_mode").invoke([HumanMessage("json please")]) == {"any": [1, 2]}
    assert backend.opened[0]["constraint"].schema == {"type": "object"}


def test_a_backend_without_a_grammar_refuses_structured_output_up_front():
    llm, _ = model('{"name": "Ada", "age": 36}', support="none")
    with pytest.raises(Exception, match="cannot draft under a JSON schema"):
        llm.with_structured_output(Person).invoke("who?")
