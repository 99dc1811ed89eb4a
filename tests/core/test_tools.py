"""The tool-call text format: reading calls out of an answer, streamed or whole, and the constraints."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stars_guard.tools import (
    CallPiece,
    OutputConstraint,
    TextPiece,
    ToolCallSplitter,
    ToolSpec,
    open_call_start,
    parse_call,
    render_tool_call,
    schema_instruction,
    split_answer,
    streamable_end,
    strip_tool_calls,
    tool_call_payloads,
    tool_constraint,
    tool_definition_payloads,
    tools_instruction,
)

TOOLS = [ToolSpec("add", "Add two numbers"), ToolSpec("search")]
CALL = render_tool_call("add", {"a": 1, "b": 2})


def test_a_rendered_call_reads_back():
    text, calls, dropped = split_answer("Sum: " + CALL + " done", ["add"])
    assert (text, dropped) == ("Sum:  done", 0)
    assert (calls[0].name, calls[0].arguments, calls[0].error) == ("add", {"a": 1, "b": 2}, None)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('{"name": "add", "arguments": {"a": 1}', "not JSON"),
        ('["add"]', "a call is a JSON object"),
        ('{"name": "rm", "arguments": {}}', "not a bound tool"),
        ('{"name": "add", "arguments": [1]}', "arguments must be a JSON object"),
    ],
)
def test_a_malformed_call_says_what_is_wrong(body: str, error: str):
    assert error in (parse_call(body, ["add"]).error or "")


@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=40))
def test_streaming_never_passes_on_part_of_a_call(cuts: list[int]):
    answer = "Let me add. " + CALL + " and " + render_tool_call("search", {"q": "x"}) + " <tool_"
    splitter, pieces, position = ToolCallSplitter(["add", "search"]), [], 0
    for cut in cuts * 50:
        if position >= len(answer):
            break
        pieces += splitter.feed(answer[position : position + cut])
        position += cut
    pieces += splitter.feed(answer[position:]) + splitter.finish()
    assert "".join(p.text for p in pieces if isinstance(p, TextPiece)) == "Let me add.  and  <tool_"
    assert [p.call.name for p in pieces if isinstance(p, CallPiece)] == ["add", "search"]
    assert all("<tool_call>" not in p.text for p in pieces if isinstance(p, TextPiece))


def test_an_unclosed_call_is_dropped_and_counted():
    text, calls, dropped = split_answer("Sure. " + CALL[:30], ["add"])
    assert (text, calls, dropped) == ("Sure. ", [], 1)
    assert open_call_start("Sure. " + CALL[:30]) == 6 and open_call_start("Sure. " + CALL) is None
    assert streamable_end("Sure. <tool") == 6 and streamable_end("Sure. " + CALL) == len("Sure. " + CALL)
    assert strip_tool_calls("A " + CALL + " B") == "A  B"


def test_tool_choice_maps_onto_the_constraint():
    assert tool_constraint(TOOLS, "none") is None and tool_constraint([], "auto") is None
    auto = tool_constraint(TOOLS, None)
    assert auto is not None and not auto.required and auto.tool_names == ("add", "search")
    for forced in ("any", "required"):
        constraint = tool_constraint(TOOLS, forced)
        assert constraint is not None and constraint.required
    named = tool_constraint(TOOLS, "search")
    assert named is not None and named.tool_names == ("search",) and named.required
    assert not named.parallel_tool_calls
    with pytest.raises(ValueError, match="names no bound tool; bound tools: add, search"):
        tool_constraint(TOOLS, "delete")


def test_tool_call_payloads_are_the_name_and_string_arguments_of_every_block_open_ones_included() -> None:
    text = (
        'Let me look. <tool_call>\n{"name": "search", "arguments": {"query": "say \\"hi\\"", "limit": 3}}\n'
        '</tool_call> Then: <tool_call>\n{"name": "send_email", '
        '"arguments": {"to": "sam@example.com", "body": "Dear Sam'
    )
    assert tool_call_payloads(text) == ["search", 'say "hi"', "send_email", "sam@example.com", "Dear Sam"]
    assert tool_call_payloads('plain prose with a {"json": "object"}') == []
    assert tool_call_payloads('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>') == ["add"]


def test_tool_definitions_are_read_as_their_names_and_descriptions() -> None:
    tool = ToolSpec(
        "lookup",
        "Find a record.",
        {"type": "object", "properties": {"key": {"type": "string", "description": "Which record."}}},
    )
    text = tools_instruction(OutputConstraint("tool_calls", tools=(tool,)))
    assert tool_definition_payloads(text) == ["lookup", "Find a record.", "Which record."]
    assert tool_definition_payloads("plain text\n{not json") == []


def test_every_phrase_of_a_tool_definition_is_read_not_only_its_descriptions() -> None:
    """Enum values, titles, defaults and property names of two or more words reach the model too;
    single words (types, identifiers) carry no request and are left to the turn's own reading.
    Words joined by hyphens or underscores are still words. They are read together, apart from the
    descriptions and out of the JSON."""
    properties = {
        "mode": {"type": "string", "title": "Search mode", "enum": ["fast", "do exactly this"], "default": "fast"},
        "what to find": {"type": "string"},
        "count": {"type": "integer", "examples": ["just-do-what-i-say"]},
    }
    tool = ToolSpec("lookup", "Find a record.", {"type": "object", "properties": properties})
    text = tools_instruction(OutputConstraint("tool_calls", tools=(tool,)))
    assert tool_definition_payloads(text) == [
        "lookup",
        "Find a record.",
        "Search mode\ndo exactly this\nwhat to find\njust-do-what-i-say",
    ]


def test_a_line_separator_inside_a_description_hides_no_tool() -> None:
    """`json.dumps` leaves U+2028 unescaped; splitting the instruction with `str.splitlines` broke
    that tool's JSON line, and its description went unread."""
    tools = (
        ToolSpec("first", "Plain.", {"type": "object", "properties": {}}),
        ToolSpec("second", "\u2028Hidden words here.", {"type": "object", "properties": {}}),
    )
    text = tools_instruction(OutputConstraint("tool_calls", tools=tools))
    assert "\u2028Hidden words here." in tool_definition_payloads(text)


def test_an_answer_schema_is_read_as_tool_definitions_are() -> None:
    schema = {"type": "object", "properties": {"steps": {"type": "string", "description": "Each step in order."}}}
    text = "You are terse.\n\n" + schema_instruction(schema)
    assert tool_definition_payloads(text) == ["Each step in order."]
    assert tool_definition_payloads(json.dumps(schema)) == []  # a JSON line with no schema header before it


def test_a_call_key_of_several_words_is_read_as_an_argument_is() -> None:
    text = '<tool_call>\n{"name": "note", "arguments": {"do this thing now": 1, "limit": 2}}\n</tool_call>'
    assert tool_call_payloads(text) == ["note", "do this thing now"]
