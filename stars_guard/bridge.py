"""The one bridge between worker threads and the event loop: the services and the LangChain layer use it.

Models are blocking code; the HTTP services are asyncio. Everything that crosses between them
goes through here, so there is one place where that hand-over can go wrong:

- `WorkerPool`: the threads blocking work runs on (the chat service's engine runs), started
  lazily and stopped with the app, queued work cancelled;
- `LoopChannel`: items from a thread to one event loop, in order (a chat request's engine events);
- `result_of`: a thread's `Future` awaited on the loop (the reward service's batched scores).

A channel whose loop has closed says so instead of raising, so a worker whose client and loop
are gone can stop quietly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class LoopChannel(Generic[T]):
    """Items from any thread to one event loop, in order: `put` anywhere, `await get()` on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[T] = asyncio.Queue()

    def put(self, item: T) -> bool:
        """Hand `item` to the loop; False when the loop is closed (nobody will ever read it)."""
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:
            return False
        return True

    async def get(self) -> T:
        return await self._queue.get()


async def result_of(future: Future[T]) -> T:
    """Await a `Future` that another thread resolves, without blocking the loop (through a `LoopChannel`)."""
    channel: LoopChannel[Future[T]] = LoopChannel()
    future.add_done_callback(channel.put)
    done = await channel.get()
    return done.result()


class WorkerPool:
    """Worker threads for blocking work handed over by the event loop. Thread-safe.

    Started on first use (or by `start`, e.g. in the app's lifespan) and again after `stop`,
    which cancels the work still queued; work already running finishes on its own.
    """

    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError(f"a worker pool needs at least one thread (got {workers})")
        self.workers = workers
        self.name = name
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)

    def stop(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, work: Callable[[], Any]) -> Future[Any]:
        """Run `work` on a worker; `RuntimeError` when the pool was stopped meanwhile."""
        self.start()
        with self._lock:
            executor = self._executor
        if executor is None:
            raise RuntimeError(f"the {self.name} worker pool is stopped")
        return executor.submit(work)
