"""OpenAI answer bodies built from an engine result: `chat.completion` and `chat.completion.chunk`.

Both carry OpenAI's `usage` and the `stars` extension (the per-response statistics, the engine's
finish reason and the seed used, so any answer can be reproduced). Pure functions of the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from stars_guard.events import STARSResult
from stars_guard.serving.sse import sse_event

# The engine's finish reasons in OpenAI's words: a spent time budget reads as `length`.
FINISH_REASONS = {"stop": "stop", "length": "length", "time_budget": "length", "refusal": "content_filter"}


def finish_reason(result: STARSResult) -> str:
    return FINISH_REASONS.get(result.finish_reason, "stop")


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: they are reported as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def stars_extension(result: STARSResult, seed: int | None) -> dict[str, Any]:
    """The `stars` block: per-response statistics, the engine's finish reason and the seed used."""
    stats = {key: _finite(value) for key, value in result.stats.as_dict().items()}
    return {**stats, "finish_reason": result.finish_reason, "seed": seed}


def usage(result: STARSResult) -> dict[str, int]:
    prompt, completion = result.stats.prompt_tokens, result.stats.tokens_emitted
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(request_id: str, created: int, model: str, result: STARSResult, seed: int | None) -> dict[str, Any]:
    """A whole (non-streaming) `chat.completion` object."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": finish_reason(result),
                "logprobs": None,
            }
        ],
        "usage": usage(result),
        "system_fingerprint": None,
        "stars": stars_extension(result, seed),
    }


class Chunks:
    """The `chat.completion.chunk` events of one stream, as server-sent event bytes."""

    def __init__(self, request_id: str, created: int, model: str) -> None:
        self.base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def delta(self, delta: Mapping[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": dict(delta), "finish_reason": finish_reason, "logprobs": None}
        return sse_event({**self.base, "system_fingerprint": None, "choices": [choice], **extra})

    def last(self, result: STARSResult, seed: int | None) -> bytes:
        """The final chunk: an empty delta with the finish reason, `usage` and `stars`."""
        return self.delta({}, finish_reason(result), usage=usage(result), stars=stars_extension(result, seed))
