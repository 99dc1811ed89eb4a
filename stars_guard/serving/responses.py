"""OpenAI answer bodies built from an engine result: `chat.completion` and `chat.completion.chunk`.

Both carry OpenAI's `usage` and the `stars` extension (the per-response statistics, the engine's
finish reason and the seed used, so any answer can be reproduced). Pure functions of the result.

With tools, the answer's `<tool_call>` blocks (`stars_guard.tools`) become OpenAI's `tool_calls`:
a call is sent only whole, once its block has closed (in a stream, as one `delta.tool_calls`
entry); a block that does not read as a call of a given tool is never sent as one (it is listed
in `stars.invalid_tool_calls`), and one still open when the answer ends is dropped and counted
(`stars.tool_calls_dropped`).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

from stars_guard.events import STARSResult
from stars_guard.serving.sse import sse_event
from stars_guard.tools import CallPiece, OutputConstraint, ParsedCall, ToolCallSplitter

# The engine's finish reasons in OpenAI's words: a spent time budget reads as `length`.
FINISH_REASONS = {"stop": "stop", "length": "length", "time_budget": "length", "refusal": "content_filter"}


def finish_reason(result: STARSResult, called: bool = False) -> str:
    """OpenAI's finish reason; `called`: the answer made tool calls, which the client is to run."""
    reason = FINISH_REASONS.get(result.finish_reason, "stop")
    return "tool_calls" if called and reason == "stop" else reason  # a cut answer still says `length`


class AnswerParts:
    """An answer's accepted text as OpenAI carries it: content, and whole tool calls.

    Without a tool constraint every piece of text is content. Fed in order, as the engine emits
    text; `finish` flushes what was held back (never an unclosed call).
    """

    def __init__(self, constraint: OutputConstraint | None) -> None:
        tools = constraint is not None and constraint.kind == "tool_calls"
        self._splitter = ToolCallSplitter(constraint.tool_names) if tools and constraint else None
        # A forced call's answer is calls only: the whitespace its grammar puts between them is not content.
        self._calls_only = tools and constraint is not None and constraint.required
        self.content: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.invalid: list[dict[str, Any]] = []

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The deltas `text` makes: `{"content": ...}` and `{"tool_calls": [one whole call]}`."""
        if self._splitter is None:
            return self._content(text)
        return self._deltas(self._splitter.feed(text))

    def finish(self) -> list[dict[str, Any]]:
        return [] if self._splitter is None else self._deltas(self._splitter.finish())

    def message(self) -> dict[str, Any]:
        """The assistant message of a whole answer (content is null when the answer is only calls)."""
        content = "".join(self.content)
        message: dict[str, Any] = {"role": "assistant", "content": content if content or not self.calls else None}
        if self.calls:
            message["tool_calls"] = [
                {key: value for key, value in call.items() if key != "index"} for call in self.calls
            ]
        return message

    def _deltas(self, pieces: list[Any]) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        for piece in pieces:
            deltas += self._call(piece.call) if isinstance(piece, CallPiece) else self._content(piece.text)
        return deltas

    def _content(self, text: str) -> list[dict[str, Any]]:
        if not text or (self._calls_only and not text.strip()):
            return []
        self.content.append(text)
        return [{"content": text}]

    def _call(self, call: ParsedCall) -> list[dict[str, Any]]:
        if call.error is not None or call.name is None or call.arguments is None:
            self.invalid.append({"name": call.name, "arguments": call.raw, "error": call.error})
            return []
        entry = {
            "index": len(self.calls),
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
        }
        self.calls.append(entry)
        return [{"tool_calls": [entry]}]


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: they are reported as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def stars_extension(result: STARSResult, seed: int | None, parts: AnswerParts | None = None) -> dict[str, Any]:
    """The `stars` block: per-response statistics, the engine's finish reason and the seed used
    (and, with tools, the blocks that did not read as calls: never sent as calls)."""
    stats = {key: _finite(value) for key, value in result.stats.as_dict().items()}
    extension = {**stats, "finish_reason": result.finish_reason, "seed": seed}
    if parts is not None and parts.invalid:
        extension["invalid_tool_calls"] = list(parts.invalid)
    return extension


def usage(result: STARSResult) -> dict[str, int]:
    prompt, completion = result.stats.prompt_tokens, result.stats.tokens_emitted
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(
    request_id: str,
    created: int,
    model: str,
    result: STARSResult,
    seed: int | None,
    constraint: OutputConstraint | None = None,
) -> dict[str, Any]:
    """A whole (non-streaming) `chat.completion` object; `constraint`: the tools the answer may call."""
    parts = AnswerParts(constraint)
    parts.feed(result.text)
    parts.finish()
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": parts.message(),
                "finish_reason": finish_reason(result, bool(parts.calls)),
                "logprobs": None,
            }
        ],
        "usage": usage(result),
        "system_fingerprint": None,
        "stars": stars_extension(result, seed, parts),
    }


class Chunks:
    """The `chat.completion.chunk` events of one stream, as server-sent event bytes."""

    def __init__(self, request_id: str, created: int, model: str) -> None:
        self.base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def delta(self, delta: Mapping[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": dict(delta), "finish_reason": finish_reason, "logprobs": None}
        return sse_event({**self.base, "system_fingerprint": None, "choices": [choice], **extra})

    def last(self, result: STARSResult, seed: int | None, parts: AnswerParts, include_usage: bool = False) -> bytes:
        """The final chunk: an empty delta with the finish reason and `stars`, and `usage` unless a
        usage chunk follows (`include_usage`: OpenAI's last chunk, `usage` and no choices)."""
        reason = finish_reason(result, bool(parts.calls))
        extension = stars_extension(result, seed, parts)
        if not include_usage:
            return self.delta({}, reason, usage=usage(result), stars=extension)
        return self.delta({}, reason, usage=None, stars=extension)

    def usage_chunk(self, result: STARSResult) -> bytes:
        """OpenAI's usage chunk (`stream_options.include_usage`): no choices, the whole answer's usage."""
        return sse_event({**self.base, "system_fingerprint": None, "choices": [], "usage": usage(result)})
