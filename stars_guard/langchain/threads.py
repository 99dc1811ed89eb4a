"""A sync iterator consumed from async code, run in a thread of its own.

`ainvoke`/`astream` need the engine's events without the event loop ever waiting on the model.
Nothing here knows LangChain; it lives beside the chat model because only the chat model uses it.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, TypeVar

from stars_guard.bridge import LoopChannel

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
    channel: LoopChannel[Any] = LoopChannel()
    stop = threading.Event()
    deliver = channel.put  # False once the loop is closed: nobody is listening any more

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
            item = await channel.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
