"""Errors in OpenAI's shape, and the one mapping from the project's exceptions to them.

Every failure a client sees is an `OpenAIError` (`{"error": {"message", "type", "param", "code"}}`),
whether request parsing, admission, the engine or an upstream service raised it. `error_for`
is the only place that decides which status and code an exception gets, so the handler, the
stream and the worker's outcome counters (4xx: `invalid`, 5xx: `failed`) always agree.
Upstream failures get a short message: the full one, which may name internal hosts, is logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from stars_guard.errors import (
    BackendError,
    ConfigError,
    ConstraintBudgetError,
    ContextWindowExceededError,
    InvalidMessagesError,
    LockedOverrideError,
    RewardError,
)
from stars_guard.serving.admission import DeadlineExceededError

DEFAULT_RETRY_AFTER_S = 1


class OpenAIError(Exception):
    """An error answer in OpenAI's shape; raised anywhere in request handling, rendered once."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, request_id: str | None = None) -> JSONResponse:
        headers = {**self.headers, **({"x-request-id": request_id} if request_id else {})}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def queue_full(running: int, waiting: int, retry_after_s: int) -> OpenAIError:
    """429: every worker busy and the waiting line full; `Retry-After` lets a balancer try elsewhere."""
    return OpenAIError(
        429,
        f"too many requests: {running} running and {waiting} waiting; retry later",
        type="rate_limit_exceeded",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after_s)},
    )


def queue_timeout(retry_after_s: int = DEFAULT_RETRY_AFTER_S) -> OpenAIError:
    """503: the request's deadline passed while it waited for a worker."""
    return OpenAIError(
        503,
        "the request timed out waiting for a worker: the service is overloaded, retry later",
        type="server_error",
        code="queue_timeout",
        headers={"Retry-After": str(retry_after_s)},
    )


def shutting_down() -> OpenAIError:
    """503: the worker pool stopped before the request could run."""
    return OpenAIError(503, "the server is shutting down", type="server_error", code="shutting_down")


def error_for(exc: BaseException) -> OpenAIError:
    """The HTTP answer for a failure of parsing, admission, the engine, its backend or its reward model."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, ContextWindowExceededError):
        return OpenAIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, InvalidMessagesError):
        return OpenAIError(400, str(exc), param="messages", code="invalid_messages")
    if isinstance(exc, LockedOverrideError):
        param = f"stars.{exc.fields[0]}" if exc.fields else "stars"
        return OpenAIError(400, str(exc), param=param, code="locked_parameter")
    if isinstance(exc, ConstraintBudgetError):  # before ConfigError, which it is
        return OpenAIError(400, str(exc), param="max_tokens", code="max_tokens_too_small")
    if isinstance(exc, ConfigError):
        return OpenAIError(400, str(exc), param="stars", code="invalid_config")
    if isinstance(exc, RewardError):
        return OpenAIError(
            502,
            "the reward model failed and the service is fail-closed: no unchecked text was sent",
            type="server_error",
            code="reward_error",
        )
    if isinstance(exc, BackendError):
        return OpenAIError(502, "the generation backend failed", type="server_error", code="backend_error")
    if isinstance(exc, DeadlineExceededError):
        return queue_timeout()
    return OpenAIError(500, "internal error while generating the answer", type="server_error", code="internal_error")
