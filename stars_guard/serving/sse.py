"""Server-sent events, and noticing a client that left while its answer is still being written.

Starlette's `StreamingResponse` only notices a vanished client when the next send fails (ASGI
2.4 servers), which can be a whole segment later; `EventStream` listens for the disconnect beside
the stream, so a guarded answer stops drafting (and frees its KV cache) as soon as nobody reads it.
A plain (non-streaming) answer uses `wait_disconnect` with `unless_gone` the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

T = TypeVar("T")


def sse_event(data: Mapping[str, Any] | str) -> bytes:
    """One `data:` event: a JSON object (NaN refused: it is not JSON) or a bare string such as `[DONE]`."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"data: {text}\n\n".encode()


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has disconnected (the request body must have been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_gone(awaitable: Awaitable[T], watcher: asyncio.Future[None]) -> T:
    """Await `awaitable`, or raise `ClientGone` (cancelling it) when the watcher sees a disconnect."""
    task = asyncio.ensure_future(awaitable)
    await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone


class EventStream(Response):
    """A `text/event-stream` response that calls `on_disconnect` when the client leaves mid-stream."""

    media_type = "text/event-stream"

    def __init__(
        self, body: AsyncIterator[bytes], on_disconnect: Callable[[], None], headers: Mapping[str, str]
    ) -> None:
        self.body_iterator = body
        self.on_disconnect = on_disconnect
        self.status_code = 200
        self.background = None
        # No caching, and no proxy buffering (nginx): each accepted segment reaches the client at once.
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self._stream(send))
        listen = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({stream, listen}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone = listen.done() and not listen.cancelled() and not stream.done()
            for task in (stream, listen):
                task.cancel()
            results = await asyncio.gather(stream, listen, return_exceptions=True)
            if gone or isinstance(results[0], OSError):
                self.on_disconnect()
            elif isinstance(results[0], Exception):
                logger.error("event stream failed: %r", results[0])

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
