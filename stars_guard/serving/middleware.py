"""ASGI middleware of the chat service: the API key, and the request body size limit.

Both answer in OpenAI's error shape. `BearerAuth` runs before any route (a request without the
key never reaches a handler); `BodySizeLimit` wraps `receive`, so the limit holds for whoever
reads a body, checked on `Content-Length` before the first byte and while a chunked body arrives,
and the reader (the chat handler) answers the 413 with its request id and log line.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stars_guard.serving.errors import OpenAIError


class BearerAuth:
    """Requires `Authorization: Bearer <key>` on every path except the open ones (compared in constant time)."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Sequence[str]) -> None:
        self.app = app
        self.key = api_key.encode()
        self.open_paths = tuple(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_open(scope["path"]) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        error = OpenAIError(
            401,
            "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await error.response()(scope, receive, send)

    def _is_open(self, path: str) -> bool:
        return any(path == open_path or path.startswith(open_path.rstrip("/") + "/") for open_path in self.open_paths)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False


class BodySizeLimit:
    """Reading more than `limit` bytes of a request body raises a 413 `OpenAIError` (`request_too_large`)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > self.limit:
                raise self._too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> OpenAIError:
        return OpenAIError(413, f"the request body is larger than {self.limit} bytes", code="request_too_large")
