"""A sync iterator consumed from async code, run in a thread of its own.

`ainvoke`/`astream` need the engine's events without the event loop ever waiting on the model.
Nothing here knows LangChain; it lives beside the chat model because only the chat model uses it.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_DONE = object()


@dataclass(frozen=True)
class _Failure:
    error: BaseException


async def iterate_in_thread(make: Callable[[], Generator[T, None, None]]) -> AsyncIterator[T]:
    """The items of `make()`, produced in a worker thread so the event loop never waits on them.

    The thread is the call's own, not the loop's default executor: a generation holds its thread
    for seconds, and parking it in the shared pool would starve LangChain's other users of that
    pool (sync callback handlers, sync fallbacks). Leaving early (a consumer that stops reading,
    a cancelled task) tells the worker to stop at the next item; it then closes the iterator
    (for the chat model: the engine's generation, which frees the KV cache). The worker runs in
    a copy of the caller's context, so context variables (tracing, callbacks) carry over.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    def deliver(item: Any) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def work() -> None:
        with closing(make()) as items:
            try:
                for item in items:
                    if stop.is_set() or not deliver(item):
                        return
                deliver(_DONE)
            except BaseException as exc:
                deliver(_Failure(exc))

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(work,), name="stars-engine", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
