"""The shortest valid completion of a partial constrained answer: what closing it costs.

A tool call or a structured answer is drafted under a grammar, but the grammar knows nothing of
the token budget: an answer can run out of tokens inside a string and never close. To finish every
such answer within `max_new_tokens`, the drafting keeps in reserve the tokens that close the answer
from where it stands, and writes that closing when the budget meets the reserve. This module computes
the closing: from the answer text so far and the constraint, the shortest text that makes it a
valid JSON value of the schema (or a complete `<tool_call>` block), written the way the grammars
write JSON (compact, `", "` and `": "` separators, properties in the schema's order, as xgrammar's
`any_whitespace=False` grammar does). Still-required fields are filled with their shortest valid
values (`""`, `0`, `true`, `null`, `[]`, the shortest enum member).

Pure and framework-free: the backends turn the text into tokens (`adapters._grammar` with the
model's vocabulary, the HTTP engines through the server's tokenizer). A schema feature this module
cannot close (a string `pattern` or `format`, `multipleOf`, `prefixItems`, open objects) makes
`Closer.closing` return None: the caller then cannot guarantee the budget and says so.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stars_guard.tools import CALL_PREFIX, CALL_SUFFIX, OutputConstraint, open_call_start, plain_json

CALL_SEPARATOR = "\n"  # between the blocks of an answer made only of calls
CALL_END = "}" + CALL_SUFFIX  # closes the call object, then the tag
_WHITESPACE = " \t\n\r"
_STRING_BODY = re.compile(r'(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*')
_PARTIAL_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?\Z")
_NUMBER_PREFIX = re.compile(r"-?(?:0|[1-9][0-9]*)?(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_MAX_DEPTH = 32  # schema nesting followed ($ref cycles end here)


# The longest string or array a closing writes by itself: a schema that asks for more (a client can
# send `minLength: 2000000000`) is not closed here, so a request cannot make this module build it.
MAX_WRITTEN = 4096


def _least(node: Mapping[str, Any], key: str) -> int:
    """`minLength` / `minItems` as a count this module may write; `Unsupported` for anything else."""
    value = node.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_WRITTEN:
        raise Unsupported(f"{key} {value!r}")
    return value


class Unsupported(Exception):
    """A schema feature the closing cannot handle (the caller gets None)."""


def call_begin(tool_name: str) -> str:
    """What a call of `tool_name` starts with, up to its arguments (the format `split_answer` parses)."""
    return f'{CALL_PREFIX}{{"name": {json.dumps(tool_name, ensure_ascii=False)}, "arguments": '


def arguments_schema(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The schema a call's arguments must match: an object, `{}` for a tool that takes none."""
    schema = plain_json(parameters)
    if not schema:
        return {"type": "object", "properties": {}}
    if "type" not in schema and "properties" in schema:
        schema["type"] = "object"
    return schema


def call_schema(name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema of one call of tool `name`: `{"name": name, "arguments": ...}`, in that order."""
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": dict(arguments)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def compact(value: Any) -> str:
    """A JSON value as the grammars write it: `", "` and `": "` separators."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


# A parse outcome: the value ended at this position (DONE), or the text ended inside it and this
# suffix closes it (OPEN).
@dataclass(frozen=True, slots=True)
class _Done:
    end: int


@dataclass(frozen=True, slots=True)
class _Open:
    suffix: str


_Outcome = _Done | _Open


class SchemaCloser:
    """Shortest values and shortest completions for one JSON schema (local `$ref`s resolved)."""

    def __init__(self, schema: Mapping[str, Any] | bool) -> None:
        self.root = plain_json(schema) if isinstance(schema, Mapping) else schema
        self._shortest: dict[int, str] = {}

    # Shortest values ---------------------------------------------------------------------------

    def shortest(self, schema: Any = None, depth: int = 0) -> str:
        """The shortest valid JSON text of `schema` (the root when None); raises `Unsupported`."""
        schema = self.root if schema is None else schema
        key = id(schema)
        if key not in self._shortest:
            choices = [self._shortest_of(kind, node, depth) for kind, node in self._kinds(schema, depth)]
            if not choices:
                raise Unsupported("a schema no value matches")
            self._shortest[key] = min(choices, key=len)
        return self._shortest[key]

    def _shortest_of(self, kind: str, node: Any, depth: int) -> str:
        if kind == "literals":
            if not node:
                raise Unsupported("an empty enum")
            return min((compact(value) for value in node), key=len)
        if kind == "string":
            return '"' + "a" * _least(node, "minLength") + '"'
        if kind in ("integer", "number"):
            return _shortest_number(node, "", kind == "integer")
        if kind == "array":
            items = node.get("items", True)
            count = _least(node, "minItems")
            return "[" + ", ".join([self.shortest(items, depth + 1)] * count) + "]" if count else "[]"
        if kind == "object":
            return "{" + self._object_rest(node, -1, True, depth)
        return "0"  # any JSON value

    # Completions -------------------------------------------------------------------------------

    def closing(self, text: str) -> str | None:
        """The shortest suffix that makes `text` a valid value of the schema; None if it cannot be
        one (not a prefix of a valid value) or the schema has a feature this module cannot close."""
        try:
            start = _skip_ws(text, 0)
            outcomes = list(self.value(self.root, text, start, 0))
        except (Unsupported, TypeError, ValueError, OverflowError, RecursionError):
            return None  # a feature not closed here, or a malformed schema value (a client's)
        return _best(outcomes, text)

    def value(self, schema: Any, text: str, i: int, depth: int) -> Iterator[_Outcome]:
        """Every way `text[i:]` can begin a value of `schema`: where it ends, or what closes it."""
        if i >= len(text):
            yield _Open(self.shortest(schema, depth))
            return
        for kind, node in self._kinds(schema, depth):
            yield from self._value_of(kind, node, text, i, depth)

    def _value_of(self, kind: str, node: Any, text: str, i: int, depth: int) -> Iterator[_Outcome]:
        if kind == "literals":
            yield from _literals([compact(value) for value in node], text, i)
        elif kind == "string":
            yield from _string(node, text, i)
        elif kind in ("integer", "number"):
            yield from _number(node, text, i, kind == "integer")
        elif kind == "array":
            yield from self._array(node, text, i, depth)
        elif kind == "object":
            yield from self._object(node, text, i, depth)
        else:
            yield from self._any(text, i, depth)

    def _array(self, node: Mapping[str, Any], text: str, i: int, depth: int) -> Iterator[_Outcome]:
        if text[i] != "[":
            return
        items = node.get("items", True)
        least = _least(node, "minItems")

        def rest(count: int) -> str:  # closing an array that holds `count` whole items
            missing = max(0, least - count)
            return "".join(", " + self.shortest(items, depth + 1) for _ in range(missing)) + "]"

        j = _skip_ws(text, i + 1)
        if j >= len(text):
            first = self.shortest(items, depth + 1) if least else ""
            yield _Open(first + (rest(1) if least else "]"))
            return
        if text[j] == "]":
            if least == 0:
                yield _Done(j + 1)
            return
        frontier = [(j, 0)]  # (where the next item starts, items before it)
        while frontier:
            start, count = frontier.pop()
            for outcome in self.value(items, text, start, depth + 1):
                if isinstance(outcome, _Open):
                    yield _Open(outcome.suffix + rest(count + 1))
                    continue
                k = _skip_ws(text, outcome.end)
                if k >= len(text):
                    yield _Open(rest(count + 1))
                elif text[k] == "]":
                    if count + 1 >= least:
                        yield _Done(k + 1)
                elif text[k] == ",":
                    after = _skip_ws(text, k + 1)
                    if after >= len(text):
                        space = "" if after > k + 1 else " "
                        yield _Open(space + self.shortest(items, depth + 1) + rest(count + 2))
                    else:
                        frontier.append((after, count + 1))

    def _object(self, node: Mapping[str, Any], text: str, i: int, depth: int) -> Iterator[_Outcome]:
        if text[i] != "{":
            return
        properties = list((node.get("properties") or {}).items())
        j = _skip_ws(text, i + 1)
        if j >= len(text):
            yield _Open(self._object_rest(node, -1, True, depth))
            return
        if text[j] == "}":
            if not self._required_after(node, -1):
                yield _Done(j + 1)
            return
        frontier = [(j, -1)]  # (where the next key starts, index of the last property written)
        while frontier:
            start, last = frontier.pop()
            for index in self._next_properties(node, last):
                name, schema = properties[index]
                key = compact(name)
                tail = text[start:]
                if not tail.startswith(key):
                    if key.startswith(tail):
                        value = self.shortest(schema, depth + 1)
                        yield _Open(key[len(tail) :] + ": " + value + self._object_rest(node, index, False, depth))
                    continue
                colon = _skip_ws(text, start + len(key))
                if colon >= len(text):
                    value = self.shortest(schema, depth + 1)
                    yield _Open(": " + value + self._object_rest(node, index, False, depth))
                    continue
                if text[colon] != ":":
                    continue
                at = _skip_ws(text, colon + 1)
                space = " " if at == colon + 1 and at >= len(text) else ""
                for outcome in self.value(schema, text, at, depth + 1):
                    if isinstance(outcome, _Open):
                        yield _Open(space + outcome.suffix + self._object_rest(node, index, False, depth))
                        continue
                    k = _skip_ws(text, outcome.end)
                    if k >= len(text):
                        yield _Open(self._object_rest(node, index, False, depth))
                    elif text[k] == "}":
                        if not self._required_after(node, index):
                            yield _Done(k + 1)
                    elif text[k] == ",":
                        after = _skip_ws(text, k + 1)
                        if after >= len(text):
                            space_after = "" if after > k + 1 else " "
                            rest = self._after_comma(node, index, depth)
                            if rest is not None:
                                yield _Open(space_after + rest)
                        else:
                            frontier.append((after, index))

    def _any(self, text: str, i: int, depth: int) -> Iterator[_Outcome]:
        """A value of an unconstrained schema (`{}`, `true`, an array without `items`)."""
        char = text[i]
        if char == '"':
            yield from _string({}, text, i)
        elif char in "-0123456789":
            yield from _number({}, text, i, False)
        elif char == "[":
            yield from self._array({"items": True}, text, i, depth)
        elif char == "{":
            raise Unsupported("an object of any keys")
        else:
            yield from _literals(["true", "false", "null"], text, i)

    # Objects -------------------------------------------------------------------------------------

    def _required_after(self, node: Mapping[str, Any], last: int) -> list[int]:
        names = [name for name, _ in (node.get("properties") or {}).items()]
        required = set(node.get("required") or ())
        return [index for index, name in enumerate(names) if index > last and name in required]

    def _next_properties(self, node: Mapping[str, Any], last: int) -> list[int]:
        """The properties that may come next after property `last`: in order, none required skipped."""
        names = list(node.get("properties") or {})
        required = set(node.get("required") or ())
        allowed: list[int] = []
        for index in range(last + 1, len(names)):
            allowed.append(index)
            if names[index] in required:
                break
        return allowed

    def _object_rest(self, node: Mapping[str, Any], last: int, first: bool, depth: int) -> str:
        """What closes an object after property `last` (-1: none yet): every required property left, then `}`."""
        properties = list((node.get("properties") or {}).items())
        parts = [
            compact(properties[index][0]) + ": " + self.shortest(properties[index][1], depth + 1)
            for index in self._required_after(node, last)
        ]
        body = ", ".join(parts) if first else "".join(", " + part for part in parts)
        return body + "}"

    def _after_comma(self, node: Mapping[str, Any], last: int, depth: int) -> str | None:
        """The shortest next property and the rest of the object, after a comma; None if none may follow."""
        properties = list((node.get("properties") or {}).items())
        options = [
            compact(properties[index][0])
            + ": "
            + self.shortest(properties[index][1], depth + 1)
            + self._object_rest(node, index, False, depth)
            for index in self._next_properties(node, last)
        ]
        return min(options, key=len) if options else None

    # Schemas -------------------------------------------------------------------------------------

    def _kinds(self, schema: Any, depth: int) -> list[tuple[str, Any]]:
        """`schema` as alternatives: (kind, node) with kind literals/string/integer/number/array/object/any."""
        if depth > _MAX_DEPTH:
            raise Unsupported("a schema nested too deep")
        if schema is True or schema == {}:
            return [("any", None)]
        if schema is False or not isinstance(schema, Mapping):
            raise Unsupported(f"schema {schema!r}")
        if "$ref" in schema:
            return self._kinds(self._resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return [("literals", [schema["const"]])]
        if "enum" in schema:
            if not isinstance(schema["enum"], list):
                raise Unsupported(f"enum {schema['enum']!r}")
            return [("literals", list(schema["enum"]))]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return [kind for option in schema[key] for kind in self._kinds(option, depth + 1)]
        if "allOf" in schema:
            if len(schema["allOf"]) != 1:
                raise Unsupported("allOf of several schemas")
            return self._kinds(schema["allOf"][0], depth + 1)
        kind = schema.get("type")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind is None:
            return [("any", None)]
        kinds = kind if isinstance(kind, list) else [kind]
        result: list[tuple[str, Any]] = []
        for name in kinds:
            if name == "null":
                result.append(("literals", [None]))
            elif name == "boolean":
                result.append(("literals", [True, False]))
            elif name in ("string", "integer", "number", "array", "object"):
                _check_supported(name, schema)
                result.append((name, schema))
            else:
                raise Unsupported(f"type {name!r}")
        return result

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise Unsupported(f"a non-local $ref {ref!r}")
        node: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                raise Unsupported(f"an unresolvable $ref {ref!r}")
            node = node[part]
        return node


def _check_supported(kind: str, schema: Mapping[str, Any]) -> None:
    if kind == "string" and ("pattern" in schema or "format" in schema):
        raise Unsupported("a string pattern or format")
    if kind in ("integer", "number") and "multipleOf" in schema:
        raise Unsupported("multipleOf")
    if kind == "array" and "prefixItems" in schema:
        raise Unsupported("prefixItems")
    if kind == "object":
        extra = schema.get("additionalProperties", False)
        if extra not in (False, None) or "patternProperties" in schema:
            raise Unsupported("an object open to other keys")


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WHITESPACE:
        i += 1
    return i


def _best(outcomes: Sequence[_Outcome], text: str) -> str | None:
    """The shortest closing among parse outcomes ("" when the text is already a whole value)."""
    options: list[str] = []
    for outcome in outcomes:
        if isinstance(outcome, _Open):
            options.append(outcome.suffix)
        elif _skip_ws(text, outcome.end) == len(text):
            options.append("")
    return min(options, key=len) if options else None


def _literals(literals: Sequence[str], text: str, i: int) -> Iterator[_Outcome]:
    tail = text[i:]
    for literal in literals:
        if tail.startswith(literal):
            yield _Done(i + len(literal))
        elif literal.startswith(tail):
            yield _Open(literal[len(tail) :])


def _string(node: Mapping[str, Any], text: str, i: int) -> Iterator[_Outcome]:
    if text[i] != '"':
        return
    body = _STRING_BODY.match(text, i + 1)
    assert body is not None  # the pattern matches the empty string
    j = body.end()
    least = _least(node, "minLength")
    if j < len(text) and text[j] == '"':
        yield _Done(j + 1)
        return
    rest = text[j:]
    escape = ""
    if rest:
        if _PARTIAL_ESCAPE.match(rest) is None:
            return  # a character a JSON string cannot hold
        escape = "n" if rest == "\\" else "0" * (6 - len(rest))
    written = len(json.loads('"' + text[i + 1 : j] + '"')) + (1 if escape else 0)
    yield _Open(escape + "a" * max(0, least - written) + '"')


def _number(node: Mapping[str, Any], text: str, i: int, integer: bool) -> Iterator[_Outcome]:
    match = _NUMBER_PREFIX.match(text, i)
    assert match is not None
    written = match.group()
    if not written:
        return
    if match.end() < len(text):
        if _is_number(written, integer) and _in_range(node, written):
            yield _Done(match.end())
        return
    try:
        yield _Open(_shortest_number(node, written, integer))
    except Unsupported:
        return


def _is_number(text: str, integer: bool) -> bool:
    return (_INTEGER if integer else _NUMBER).match(text) is not None


def _bounds(node: Mapping[str, Any]) -> tuple[float, float, bool, bool]:
    """(low, high, low exclusive, high exclusive) of a number schema."""
    low, high = -math.inf, math.inf
    low_open = high_open = False
    if "minimum" in node:
        low = float(node["minimum"])
    floor = node.get("exclusiveMinimum")
    if isinstance(floor, int | float) and not isinstance(floor, bool) and float(floor) >= low:
        low, low_open = float(floor), True
    if "maximum" in node:
        high = float(node["maximum"])
    ceiling = node.get("exclusiveMaximum")
    if isinstance(ceiling, int | float) and not isinstance(ceiling, bool) and float(ceiling) <= high:
        high, high_open = float(ceiling), True
    return low, high, low_open, high_open


def _in_range(node: Mapping[str, Any], text: str) -> bool:
    low, high, low_open, high_open = _bounds(node)
    value = float(text)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return above and below


def _shortest_number(node: Mapping[str, Any], written: str, integer: bool) -> str:
    """The shortest suffix that makes `written` (a number's start, maybe empty) a valid number in range."""
    if (written and written[-1] in ".eE+") or (written.endswith("-") and len(written) > 1):
        suffix = "0"  # a fraction or an exponent needs a digit
        if _in_range(node, written + suffix):
            return suffix
        raise Unsupported("a number in range after its fraction or exponent")
    if _is_number(written, integer):
        if _in_range(node, written):
            return ""
        if "." in written or "e" in written.lower():
            raise Unsupported("a number out of range")
    if not written:
        try:
            return _digits_in_range(node, "")
        except Unsupported:
            return "-" + _digits_in_range(node, "-")
    return _digits_in_range(node, written)


def _digits_in_range(node: Mapping[str, Any], written: str) -> str:
    """The fewest digits after `written` (an integer's start) that give an integer in range."""
    low, high, low_open, high_open = _bounds(node)
    least = math.ceil(low) + (1 if low_open and float(math.ceil(low)) == low else 0) if math.isfinite(low) else None
    most = (
        math.floor(high) - (1 if high_open and float(math.floor(high)) == high else 0) if math.isfinite(high) else None
    )
    negative = written.startswith("-")
    digits = written.lstrip("-")
    for length in range(0, 24):
        if digits == "0" and length:
            break
        if not digits:
            if length == 0:
                continue
            smallest = 0 if length == 1 and not negative else 10 ** (length - 1)
            span = (smallest, 10**length - 1)
        else:
            base = int(digits) * 10**length
            span = (base, base + 10**length - 1)
        low_value, high_value = (-span[1], -span[0]) if negative else span
        if least is not None:
            low_value = max(low_value, least)
        if most is not None:
            high_value = min(high_value, most)
        if low_value <= high_value:
            value = low_value if not negative else high_value  # nearest zero within the span
            if value == 0 and negative:
                value = -1 if low_value <= -1 else None  # "-0" is not written
                if value is None:
                    continue
            text = str(value)
            if text.startswith(written) and len(text) == len(written) + length:
                return text[len(written) :]
    raise Unsupported("no number in range")


# Whole answers ---------------------------------------------------------------------------------


class Closer:
    """The closing of a whole answer under an `OutputConstraint`: a JSON value, or `<tool_call>` blocks.

    `needs_end` says whether the answer must also end there (an EOS the budget has to hold): true for a
    JSON answer and forced calls, false under 'auto', where text may follow a closed call.
    """

    def __init__(self, constraint: OutputConstraint) -> None:
        self.constraint = constraint
        self.needs_end = constraint.kind == "json_schema" or constraint.required
        if constraint.kind == "json_schema":
            self.json = SchemaCloser(constraint.schema or True)
        else:
            calls = [call_schema(tool.name, arguments_schema(tool.parameters)) for tool in constraint.tools]
            self.json = SchemaCloser(calls[0] if len(calls) == 1 else {"anyOf": calls})

    def shortest(self) -> str | None:
        """The shortest whole answer; "" under 'auto' (no call needed); None if it cannot be computed."""
        return self.closing("")

    def closing(self, text: str) -> str | None:
        """The shortest text that completes `text` as an answer; None when it is not a valid start
        or the schema has a feature this module cannot close."""
        if self.constraint.kind == "json_schema":
            return self.json.closing(text)
        try:
            if not self.constraint.required:
                start = open_call_start(text)
                return "" if start is None else self._block(text, start, auto=True)
            return self._calls(text)
        except (Unsupported, TypeError, ValueError, OverflowError, RecursionError):
            return None  # a feature not closed here, or a malformed schema value (a client's)

    def _calls(self, text: str) -> str | None:
        """Only call blocks: one, or several separated by newlines when calls are parallel."""
        position, calls = 0, 0
        while True:
            if calls:
                rest = text[position:]
                if not rest:
                    return ""
                if not self.constraint.parallel_tool_calls or not rest.startswith(CALL_SEPARATOR):
                    return None
                position += len(CALL_SEPARATOR)
            end = self._block_end(text, position)
            if isinstance(end, str) or end is None:
                return end
            position, calls = end, calls + 1

    def _block(self, text: str, start: int, auto: bool) -> str | None:
        end = self._block_end(text, start)
        if isinstance(end, int):
            return "" if auto or end == len(text) else None
        return end

    def _block_end(self, text: str, start: int) -> int | str | None:
        """Where the block at `start` ends, or what closes it (a str), or None if it is no block."""
        tail = text[start:]
        if not tail.startswith(CALL_PREFIX):
            if CALL_PREFIX.startswith(tail):
                return CALL_PREFIX[len(tail) :] + self.json.shortest() + CALL_SUFFIX
            return None
        options: list[str] = []
        ends: list[int] = []
        for outcome in self.json.value(self.json.root, text, start + len(CALL_PREFIX), 0):
            if isinstance(outcome, _Open):
                options.append(outcome.suffix + CALL_SUFFIX)
                continue
            for gap in range(outcome.end, _skip_ws(text, outcome.end) + 1):  # a server's grammar may add spaces
                after = text[gap:]
                if after.startswith(CALL_SUFFIX):
                    ends.append(gap + len(CALL_SUFFIX))
                elif CALL_SUFFIX.startswith(after):
                    options.append(CALL_SUFFIX[len(after) :])
        if ends:
            return min(ends)
        return min(options, key=len) if options else None


def closer_for(constraint: OutputConstraint | None) -> Closer | None:
    """The closer of a constraint; None without one."""
    return None if constraint is None else Closer(constraint)


def describe(constraint: OutputConstraint) -> str:
    """What the constraint asks for, in words, for error messages."""
    if constraint.kind == "json_schema":
        return "a structured answer (its JSON schema)"
    names = " or ".join(repr(name) for name in constraint.tool_names)
    return f"a call of {names}"
