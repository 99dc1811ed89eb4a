"""The shortest valid completion of a partial constrained answer (`stars_guard.json_closing`).

Every prefix of a valid answer must close into a valid answer, never by a longer closing than the
rest of that answer (the closing is the shortest), in the exact format the grammar accepts: each
closed prefix is checked with `jsonschema` and, where xgrammar is installed, with the grammar the
local backends draft under.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stars_guard.json_closing import Closer, SchemaCloser, call_begin, compact
from stars_guard.tools import OutputConstraint, ToolSpec, split_answer
from tests.json_schemas import instance, schemas

TICKET = ToolSpec(
    "create_ticket",
    "Create a support ticket.",
    {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "priority": {"type": "string", "enum": ["low", "medium", "high"]},
            "count": {"type": "integer", "minimum": 10, "maximum": 500},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "done": {"type": "boolean"},
            "note": {"type": "string"},
        },
        "required": ["title", "priority", "count", "tags", "done"],
    },
)
CLOCK = ToolSpec("get_time", "The time (no arguments).")
FORCED = OutputConstraint("tool_calls", tools=(TICKET,), required=True, parallel_tool_calls=False)


def grammar_matcher(constraint: OutputConstraint) -> Any:
    """A fresh xgrammar matcher of `constraint` over a vocabulary of single bytes (None without xgrammar)."""
    xgr = pytest.importorskip("xgrammar")
    from stars_guard.adapters._grammar import ConstraintGrammars

    pieces = [bytes([byte]) for byte in range(256)] + [b""]
    grammars = _GRAMMARS.setdefault("bytes", ConstraintGrammars.for_byte_pieces(pieces, [256]))
    del xgr
    return grammars.compiled(constraint)


_GRAMMARS: dict[str, Any] = {}


def accepted_by_grammar(constraint: OutputConstraint, text: str) -> bool:
    """Whether the real grammar takes `text` whole; True where xgrammar is not installed (the
    torch-free matrix), where `jsonschema` alone checks the closings."""
    try:
        import xgrammar as xgr
    except ImportError:
        return True

    matcher = xgr.GrammarMatcher(grammar_matcher(constraint))
    return bool(matcher.accept_string(text)) and bool(matcher.is_completed())


# Shortest values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "shortest"),
    [
        ({"type": "string"}, '""'),
        ({"type": "string", "minLength": 2}, '"aa"'),
        ({"type": "integer"}, "0"),
        ({"type": "integer", "minimum": 10}, "10"),
        ({"type": "integer", "exclusiveMinimum": 10}, "11"),
        ({"type": "integer", "maximum": -3}, "-3"),
        ({"type": "number"}, "0"),
        ({"type": "boolean"}, "true"),
        ({"type": "null"}, "null"),
        ({"enum": ["medium", "low", "high"]}, '"low"'),
        ({"const": "x"}, '"x"'),
        ({"type": "array", "items": {"type": "integer"}}, "[]"),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, "[0, 0]"),
        ({"type": ["string", "null"]}, '""'),
        ({"anyOf": [{"type": "boolean"}, {"type": "integer"}]}, "0"),
        (
            {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["b"]},
            '{"b": 0}',
        ),
        (
            {
                "$defs": {"Inner": {"type": "object", "properties": {"x": {"type": "boolean"}}, "required": ["x"]}},
                "type": "object",
                "properties": {"inner": {"$ref": "#/$defs/Inner"}},
                "required": ["inner"],
            },
            '{"inner": {"x": true}}',
        ),
    ],
)
def test_the_shortest_value_of_each_kind(schema: dict[str, Any], shortest: str) -> None:
    assert SchemaCloser(schema).shortest() == shortest
    jsonschema.validate(json.loads(shortest), schema)


# Closing partial answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "closing"),
    [
        ("", '{"title": "", "priority": "low", "count": 10, "tags": [""], "done": true}'),
        ('{"ti', 'tle": "", "priority": "low", "count": 10, "tags": [""], "done": true}'),
        ('{"title": "Saf', '", "priority": "low", "count": 10, "tags": [""], "done": true}'),
        ('{"title": "a\\', 'n", "priority": "low", "count": 10, "tags": [""], "done": true}'),
        ('{"title": "a\\u00', '00", "priority": "low", "count": 10, "tags": [""], "done": true}'),
        ('{"title": "a", "priority": "me', 'dium", "count": 10, "tags": [""], "done": true}'),
        ('{"title": "a", "priority": "high", "count": 2', '0, "tags": [""], "done": true}'),
        ('{"title": "a", "priority": "high", "count": 20', ', "tags": [""], "done": true}'),
        ('{"title": "a", "priority": "high", "count": 20, "tags": [', '""], "done": true}'),
        ('{"title": "a", "priority": "high", "count": 20, "tags": ["x",', ' ""], "done": true}'),
        ('{"title": "a", "priority": "high", "count": 20, "tags": ["x"], "done": f', "alse}"),
        ('{"title": "a", "priority": "high", "count": 20, "tags": ["x"], "done": false,', ' "note": ""}'),
        ('{"title": "a", "priority": "high", "count": 20, "tags": ["x"], "done": false}', ""),
    ],
)
def test_closing_a_partial_answer(text: str, closing: str) -> None:
    schema = dict(TICKET.parameters)
    assert SchemaCloser(schema).closing(text) == closing
    jsonschema.validate(json.loads(text + closing), schema)


@pytest.mark.parametrize(
    "text",
    [
        '{"x',  # no such property
        '{"title": 1',  # a number where a string goes
        '{"title": "a", "priority": "urgent"',  # not in the enum
        '{"title": "a", "priority": "low", "count": -',  # no negative count is in range
        '{"title": "a"}',  # required fields missing after the object closed
        '{"title": "a", "priority": "low", "count": 10, "tags": ["x"], "done": true} x',
    ],
)
def test_a_text_that_no_value_starts_with_has_no_closing(text: str) -> None:
    assert SchemaCloser(dict(TICKET.parameters)).closing(text) is None


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^[a-z]+$"},
        {"type": "string", "format": "date-time"},
        {"type": "integer", "multipleOf": 7},
        {"type": "object", "properties": {}, "additionalProperties": True},
        {"$ref": "https://example.com/schema.json"},
    ],
)
def test_features_the_closing_does_not_handle_give_none(schema: dict[str, Any]) -> None:
    assert SchemaCloser(schema).closing("") is None


def test_whitespace_between_tokens_is_read_as_a_server_writes_it() -> None:
    """llama-server's grammars allow whitespace around separators; the closing still applies."""
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
    closer = SchemaCloser(schema)
    assert closer.closing('{\n  "a" : "x" ,\n  "b":') == " 0}"
    assert closer.closing('{ "a": "x",') == ' "b": 0}'
    assert closer.closing('{ "a": "x", ') == '"b": 0}'


# Tool calls --------------------------------------------------------------------------------------


def test_a_forced_call_closes_into_one_call_the_parser_reads() -> None:
    closer = Closer(FORCED)
    shortest = closer.shortest()
    assert shortest is not None and shortest.startswith(call_begin("create_ticket"))
    for cut in range(len(shortest)):
        assert closer.closing(shortest[:cut]) == shortest[cut:]
    text, calls, dropped = split_answer(shortest, ["create_ticket"])
    assert (text, dropped, [call.name for call in calls]) == ("", 0, ["create_ticket"])
    assert calls[0].arguments == {"title": "", "priority": "low", "count": 10, "tags": [""], "done": True}
    assert closer.needs_end


def test_several_tools_close_into_the_shortest_call_and_parallel_calls_may_end_after_any() -> None:
    both = OutputConstraint("tool_calls", tools=(TICKET, CLOCK), required=True, parallel_tool_calls=True)
    closer = Closer(both)
    assert closer.shortest() == call_begin("get_time") + "{}}\n</tool_call>"
    one = call_begin("get_time") + "{}}\n</tool_call>"
    assert closer.closing(one) == ""
    assert closer.closing(one + "\n<tool_call>\n") == closer.shortest().removeprefix("<tool_call>\n")  # type: ignore[union-attr]
    assert closer.closing(one + "\nHello") is None


def test_under_auto_only_an_open_call_needs_closing() -> None:
    auto = OutputConstraint("tool_calls", tools=(TICKET,))
    closer = Closer(auto)
    assert not closer.needs_end
    assert closer.shortest() == ""
    assert closer.closing("Sure, let me") == ""
    assert closer.closing('Sure <tool_call>\n{"name": "create_ticket", "arguments": {"title": "x') == (
        '", "priority": "low", "count": 10, "tags": [""], "done": true}}\n</tool_call>'
    )


# Properties over random schemas ------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_every_prefix_of_a_valid_answer_closes_into_a_valid_answer_no_longer_than_its_rest(data: st.DataObject) -> None:
    schema = data.draw(schemas())
    text = compact(data.draw(instance(schema)))
    constraint = OutputConstraint("json_schema", schema=schema)
    closer = Closer(constraint)
    assert accepted_by_grammar(constraint, text), text  # the instance is written as the grammar writes JSON
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(text)), min_size=1, max_size=8))) | {0, len(text)})
    for cut in cuts:
        closing = closer.closing(text[:cut])
        assert closing is not None, (text[:cut], schema)
        assert len(closing) <= len(text) - cut
        closed = text[:cut] + closing
        jsonschema.validate(json.loads(closed), schema)
        assert accepted_by_grammar(constraint, closed), (closed, schema)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_prefix_of_a_forced_call_closes_into_a_call_of_its_schema(data: st.DataObject) -> None:
    schema = data.draw(schemas(depth=1))
    tool = ToolSpec("do_it", "", schema)
    constraint = OutputConstraint("tool_calls", tools=(tool,), required=True, parallel_tool_calls=False)
    text = call_begin("do_it") + compact(data.draw(instance(schema))) + "}\n</tool_call>"
    closer = Closer(constraint)
    for cut in sorted(set(data.draw(st.lists(st.integers(0, len(text)), min_size=1, max_size=6)))):
        closing = closer.closing(text[:cut])
        assert closing is not None and len(closing) <= len(text) - cut
        _, calls, dropped = split_answer(text[:cut] + closing, ["do_it"])
        assert dropped == 0 and len(calls) == 1 and calls[0].arguments is not None
        jsonschema.validate(calls[0].arguments, schema)
        assert accepted_by_grammar(constraint, text[:cut] + closing)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "minLength": 2_000_000_000},
        {"type": "string", "minLength": 1e300},
        {"type": "string", "minLength": "x"},
        {"type": "array", "items": {"type": "string"}, "minItems": -1},
        {"enum": []},
        {"enum": "abc"},
    ],
)
def test_a_malformed_or_huge_schema_value_is_not_closed_and_raises_nothing(schema: dict) -> None:
    """Schemas come from clients: a closing that cannot be computed is None, never a 2 GB string or a crash."""
    closer = Closer(OutputConstraint("json_schema", schema=schema))
    assert closer.shortest() is None
    assert closer.closing('"ab') is None
