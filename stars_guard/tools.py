"""Tool calls and structured answers as text: the format the model writes, and what constrains it.

Pure and framework-free. The LangChain layer converts tools and messages into these values; the
engine uses `tool_call_spans` to know which part of an answer is a tool call (`guard_tool_calls`);
backends with a grammar (`stars_guard.adapters._grammar`) draft under an `OutputConstraint`.

The tool-call format (docs/agents.md): a call is one block in the answer,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

the layout Qwen2.5, Qwen3 and Hermes models are trained on. A chat template that knows tools
and writes calls this way (`adapters._chat.template_knows_tools` checks) renders the tools and the
tool turns itself; for any other template (SmolLM2's has no tool support) `plain_turns` writes
them as text: the tools described in the system turn, earlier calls as blocks in assistant turns,
and each run of results as one user turn of `<tool_response>` blocks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from stars_guard.messages import ChatMessage, own_texts

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"
# The exact text around a call's JSON as the grammar drafts it (the parser accepts any whitespace).
CALL_PREFIX = TOOL_CALL_OPEN + "\n"
CALL_SUFFIX = "\n" + TOOL_CALL_CLOSE

ToolChoice = Literal["auto", "required"] | str  # a tool's name forces that tool


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: its name, what it is for, and its arguments' JSON schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}


@dataclass(frozen=True, slots=True)
class OutputConstraint:
    """What an answer must look like; backends with a grammar enforce it token by token.

    - `kind="json_schema"`: the whole answer is one JSON value matching `schema`.
    - `kind="tool_calls"`: free text in which every `<tool_call>` block is a valid call of one of
      `tools` (JSON arguments matching its schema). With `required`, the answer is only calls
      (at least one; exactly one when `parallel_tool_calls` is false).
    """

    kind: Literal["json_schema", "tool_calls"]
    schema: Mapping[str, Any] | None = None
    tools: tuple[ToolSpec, ...] = ()
    required: bool = False
    parallel_tool_calls: bool = True

    def __post_init__(self) -> None:
        if self.kind == "json_schema" and self.schema is None:
            raise ValueError("a json_schema constraint needs a schema")
        if self.kind == "tool_calls" and not self.tools:
            raise ValueError("a tool_calls constraint needs at least one tool")

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(tool.name for tool in self.tools)


def tool_constraint(
    tools: Sequence[ToolSpec], tool_choice: ToolChoice | None, parallel_tool_calls: bool = True
) -> OutputConstraint | None:
    """The constraint for bound tools under `tool_choice` (None: 'auto'); None for 'none'.

    'any' is LangChain's name for 'required'. A tool's name forces that one tool.
    """
    choice = "auto" if tool_choice in (None, True) else tool_choice
    if choice == "none" or not tools:
        return None
    if choice in ("auto", "required", "any"):
        return OutputConstraint(
            "tool_calls", tools=tuple(tools), required=choice != "auto", parallel_tool_calls=parallel_tool_calls
        )
    chosen = [tool for tool in tools if tool.name == choice]
    if not chosen:
        names = ", ".join(tool.name for tool in tools)
        raise ValueError(f"tool_choice={choice!r} names no bound tool; bound tools: {names}")
    return OutputConstraint("tool_calls", tools=tuple(chosen), required=True, parallel_tool_calls=False)


def plain_json(value: Any) -> Any:
    """A schema as plain JSON: dicts and lists (a frozen constraint may hold other mappings and tuples)."""
    if isinstance(value, Mapping):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain_json(item) for item in value]
    return value


# Rendering -----------------------------------------------------------------------------------


def tools_instruction(constraint: OutputConstraint) -> str:
    """The system-turn text that tells the model which tools it has and how to call them."""
    lines = [
        "You can call tools. To call one, write exactly:",
        f'{CALL_PREFIX}{{"name": <tool name>, "arguments": <JSON object>}}{CALL_SUFFIX}',
        "The result comes back in " + TOOL_RESPONSE_OPEN + " tags. The tools:",
    ]
    lines += [json.dumps(plain_json(tool.as_dict()), ensure_ascii=False) for tool in constraint.tools]
    if constraint.required:
        lines.append("Answer with a tool call only.")
    else:
        lines.append("Call a tool only when it helps; otherwise answer in plain text.")
    return "\n".join(lines)


def prompt_instruction(constraint: OutputConstraint | None, *, native_tools: bool = False) -> str | None:
    """The system-turn text a constraint needs: the tools (unless the template renders them), or the schema."""
    if constraint is None:
        return None
    if constraint.kind == "json_schema":
        assert constraint.schema is not None
        return schema_instruction(constraint.schema)
    return None if native_tools else tools_instruction(constraint)


def plain_turns(messages: Sequence[ChatMessage], constraint: OutputConstraint | None) -> list[ChatMessage]:
    """The conversation in the text format, for a chat template without tool support.

    Calls join their assistant turn as `<tool_call>` blocks after its text; each run of tool
    results becomes one user turn of `<tool_response>` blocks; the constraint's instruction joins
    the first system turn (or becomes one). A conversation without tools comes back unchanged.
    Rewards read this form too, whatever the backend's template.
    """
    turns: list[ChatMessage] = []
    results: list[str] = []
    for message in messages:
        if message.role == "tool":
            results.append(render_tool_result(message.content))
            continue
        if results:
            turns.append(ChatMessage("user", "\n".join(results)))
            results = []
        if message.tool_calls:
            calls = [render_tool_call(call.name, call.arguments) for call in message.tool_calls]
            message = ChatMessage("assistant", "\n".join(part for part in (message.content, *calls) if part))
        turns.append(message)
    if results:
        turns.append(ChatMessage("user", "\n".join(results)))
    return with_instruction(turns, prompt_instruction(constraint))


def with_instruction(turns: Sequence[ChatMessage], instruction: str | None) -> list[ChatMessage]:
    """`turns` with `instruction` joined to the first system turn, or as a new first system turn.
    The harm gate reads the instruction (the client's tools or schema) apart from that turn's own
    texts, and never reads an operator's prompt (`ChatMessage.client_texts`)."""
    if not instruction:
        return list(turns)
    if turns and turns[0].role == "system":
        first = turns[0].content
        joined = f"{first}\n\n{instruction}" if first else instruction
        return [ChatMessage("system", joined, client_texts=(*own_texts(turns[0]), instruction)), *turns[1:]]
    return [ChatMessage("system", instruction), *turns]


def template_tools(constraint: OutputConstraint | None) -> list[dict[str, Any]] | None:
    """The bound tools as chat templates take them (OpenAI function definitions); None without tools."""
    if constraint is None or constraint.kind != "tool_calls":
        return None
    return [{"type": "function", "function": plain_json(tool.as_dict())} for tool in constraint.tools]


SCHEMA_HEADER = "Answer with one JSON value only, matching this JSON schema:"
"""The line before the schema in `schema_instruction` (its schema is read as tool definitions are)."""


def schema_instruction(schema: Mapping[str, Any]) -> str:
    """The system-turn text for a structured answer: one JSON value matching `schema`."""
    return f"{SCHEMA_HEADER}\n" + json.dumps(plain_json(schema), ensure_ascii=False)


def render_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """A call as the model writes it (for assistant turns in the history)."""
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{CALL_PREFIX}{body}{CALL_SUFFIX}"


def render_tool_result(content: str) -> str:
    """A tool's result as it goes back to the model (inside a user turn)."""
    return f"{TOOL_RESPONSE_OPEN}\n{content}\n{TOOL_RESPONSE_CLOSE}"


# Reading answers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedCall:
    """One closed `<tool_call>` block: the call, or why it is not one (`error`)."""

    raw: str  # the JSON text between the tags
    name: str | None
    arguments: dict[str, Any] | None
    error: str | None = None


def tool_call_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of `<tool_call>` blocks in `text`, tags included; an unclosed block runs to the end."""
    spans: list[tuple[int, int]] = []
    start = text.find(TOOL_CALL_OPEN)
    while start >= 0:
        close = text.find(TOOL_CALL_CLOSE, start + len(TOOL_CALL_OPEN))
        if close < 0:
            spans.append((start, len(text)))
            break
        end = close + len(TOOL_CALL_CLOSE)
        spans.append((start, end))
        start = text.find(TOOL_CALL_OPEN, end)
    return spans


_JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)(")?\s*(:)?')


def tool_call_payloads(text: str) -> list[str]:
    """The words each tool-call block of `text` carries, in order: the tool's name, every string
    value of its arguments, and every key of two or more words (a key is text the model reads too:
    `{"<a request>": 1}` carries the request), without the JSON around them; a block still open at
    the end counts up to where it stops.

    What a reward reads to judge what a call asks a tool to do, apart from the answer's prose.
    """
    words: list[str] = []
    for start, end in tool_call_spans(text):
        body = text[start + len(TOOL_CALL_OPEN) : end].removesuffix(TOOL_CALL_CLOSE)
        for match in _JSON_STRING.finditer(body):
            raw, closed, colon = match.groups()
            try:
                value = json.loads(f'"{raw}"') if closed else raw
            except json.JSONDecodeError:
                value = raw
            if colon and not _is_phrase(value):  # an identifier-like key ("query", "limit")
                continue
            if value.strip():
                words.append(value)
    return words


def tool_definition_payloads(text: str) -> list[str]:
    """The words the tool definitions in `text` carry (`tools_instruction` writes one JSON object per
    line), and the schema of a structured answer (`schema_instruction`): each tool's name, every
    description, and every other string of two or more words anywhere in it (titles, enum values,
    defaults, examples, property names), those read together, one line each, as one text.

    Tool definitions and schemas are client text the model reads: a harmful request placed in a
    description or an enum value must be read as such, not as one line among the JSON of a long
    instruction. Lines are split at newlines only: `json.dumps` leaves U+2028, U+2029 and U+0085
    unescaped inside strings, and `str.splitlines` would break a definition there and skip it.
    """
    words: list[str] = []
    lines = text.split("\n")
    for index, line in enumerate(lines):
        schema = index > 0 and lines[index - 1].endswith(SCHEMA_HEADER)
        if not (line.startswith("{") and (schema or '"parameters"' in line)):
            continue
        try:
            definition = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(definition, dict):
            continue
        if not schema:
            if not isinstance(definition.get("name"), str):
                continue
            words.append(definition["name"])
        descriptions, phrases = _phrases(definition)
        words += descriptions
        words.append("\n".join(dict.fromkeys(phrases)))
    return [word for word in dict.fromkeys(words) if word.strip()]


_WORD = re.compile(r"[^\W_]+")


def _is_phrase(text: str) -> bool:
    """Two or more words, however joined ("build a bomb", "build-a-bomb", "build_a_bomb"): text
    that can carry a request (a one-word identifier or type name cannot)."""
    return len(_WORD.findall(text, 0, 200)) >= 2


def _phrases(value: Any) -> tuple[list[str], list[str]]:
    """(descriptions, every other string or key of two or more words), in document order. The
    others are read together, one reading per definition: read one by one, a tool's 700 enum
    values ("alpha12 beta12") were 700 readings, each a fresh chance for the gate to take a
    fragment for a harmful request (0.99 for some), and 700 encoder calls a round."""
    found = list(_strings(value))
    descriptions = [text for key, text in found if key == "description"]
    return descriptions, [text for key, text in found if key != "description" and _is_phrase(text)]


def _strings(value: Any, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    """Every string in a JSON value, keys included, each with the key it is the value of."""
    if isinstance(value, dict):
        for item_key, item in value.items():
            yield None, item_key
            yield from _strings(item, item_key)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield key, value


def open_call_start(text: str) -> int | None:
    """Where a `<tool_call>` block that `text` leaves unclosed begins; None when every block closed."""
    start = text.rfind(TOOL_CALL_OPEN)
    if start < 0 or text.find(TOOL_CALL_CLOSE, start + len(TOOL_CALL_OPEN)) >= 0:
        return None
    return start


def streamable_end(text: str) -> int:
    """How much of a growing answer may be streamed: not an open block, nor a tail that may open one."""
    start = open_call_start(text)
    return len(text) - _partial_tag_length(text) if start is None else start


def strip_tool_calls(text: str) -> str:
    """`text` without its tool-call blocks: the natural-language part of an answer."""
    kept, position = [], 0
    for start, end in tool_call_spans(text):
        kept.append(text[position:start])
        position = end
    kept.append(text[position:])
    return "".join(kept).strip()


def parse_call(raw: str, tool_names: Sequence[str]) -> ParsedCall:
    """Read one block's JSON; a call must name a bound tool and carry an arguments object."""
    body = raw.strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        return ParsedCall(body, None, None, f"not JSON: {exc.msg} at character {exc.pos}")
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return ParsedCall(body, None, None, 'a call is a JSON object {"name": ..., "arguments": {...}}')
    name, arguments = value["name"], value.get("arguments", {})
    if name not in tool_names:
        return ParsedCall(body, name, None, f"{name!r} is not a bound tool ({', '.join(tool_names)})")
    if not isinstance(arguments, dict):
        return ParsedCall(body, name, None, "arguments must be a JSON object")
    return ParsedCall(body, name, arguments)


@dataclass(frozen=True, slots=True)
class TextPiece:
    text: str


@dataclass(frozen=True, slots=True)
class CallPiece:
    call: ParsedCall


Piece = TextPiece | CallPiece


class ToolCallSplitter:
    """Splits streamed answer text into plain text and whole tool calls.

    Text outside blocks is passed on at once, except a tail that could be the start of
    `<tool_call>`; a block is passed on only when it closes, so a call is never streamed in part.
    A block still open when the answer ends (cut by a refusal, the token budget or the deadline)
    is dropped and counted: it was never a complete call.
    """

    def __init__(self, tool_names: Sequence[str]) -> None:
        self.tool_names = tuple(tool_names)
        self._buffer = ""
        self._in_call = False
        self.dropped = 0

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        pieces: list[Piece] = []
        while True:
            if self._in_call:
                close = self._buffer.find(TOOL_CALL_CLOSE)
                if close < 0:
                    return pieces
                pieces.append(CallPiece(parse_call(self._buffer[:close], self.tool_names)))
                self._buffer = self._buffer[close + len(TOOL_CALL_CLOSE) :]
                self._in_call = False
                continue
            start = self._buffer.find(TOOL_CALL_OPEN)
            if start >= 0:
                if start:
                    pieces.append(TextPiece(self._buffer[:start]))
                self._buffer = self._buffer[start + len(TOOL_CALL_OPEN) :]
                self._in_call = True
                continue
            keep = _partial_tag_length(self._buffer)
            safe = len(self._buffer) - keep
            if safe:
                pieces.append(TextPiece(self._buffer[:safe]))
                self._buffer = self._buffer[safe:]
            return pieces

    def finish(self) -> list[Piece]:
        """What is left when the answer ends: held-back text, never an unclosed call."""
        pieces: list[Piece] = []
        if self._in_call:
            self.dropped += 1
        elif self._buffer:
            pieces.append(TextPiece(self._buffer))
        self._buffer, self._in_call = "", False
        return pieces


def _partial_tag_length(text: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `<tool_call>`."""
    for length in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-length:]):
            return length
    return 0


def split_answer(text: str, tool_names: Sequence[str]) -> tuple[str, list[ParsedCall], int]:
    """A whole answer as (plain text, its closed calls in order, unclosed blocks dropped)."""
    splitter = ToolCallSplitter(tool_names)
    pieces = splitter.feed(text) + splitter.finish()
    plain = "".join(piece.text for piece in pieces if isinstance(piece, TextPiece))
    calls = [piece.call for piece in pieces if isinstance(piece, CallPiece)]
    return plain, calls, splitter.dropped
