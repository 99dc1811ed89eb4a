"""Admission: at most `limit` requests at work, up to `queue` more waiting in FIFO order.

The chat service turns the two ways in which admission says no into HTTP answers
(`stars_guard.serving.errors`): `QueueFullError` is a 429 with `Retry-After`, so a load balancer
tries another replica; `DeadlineExceededError` (still waiting at the request's deadline) is a
503. Pure asyncio and threading: nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass


class QueueFullError(Exception):
    """Every worker is busy and the waiting line is full."""


class DeadlineExceededError(Exception):
    """The request's deadline passed before its work could start."""


@dataclass(eq=False)
class _Ticket:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    granted: bool = False


def _grant(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Admission:
    """Worker slots and a bounded waiting line (module docstring). Thread-safe.

    Slots are released by worker threads once the engine has really stopped (not when a client
    goes away), so `running` never undercounts the work in progress; waiters are woken on their
    own event loop.
    """

    def __init__(self, limit: int, queue: int) -> None:
        if limit < 1 or queue < 0:
            raise ValueError(f"max_concurrent must be >= 1 and max_queue >= 0 (got {limit}, {queue})")
        self.limit = limit
        self.queue = queue
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: deque[_Ticket] = deque()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, timeout: float) -> None:
        """Take a slot, waiting at most `timeout` s; `QueueFullError` or `DeadlineExceededError` otherwise."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._running < self.limit and not self._waiting:
                self._running += 1
                return
            if len(self._waiting) >= self.queue:
                raise QueueFullError
            ticket = _Ticket(loop, loop.create_future())
            self._waiting.append(ticket)
        try:
            await asyncio.wait_for(asyncio.shield(ticket.future), max(timeout, 0.0))
        except BaseException as exc:
            with self._lock:
                if ticket.granted:  # the slot arrived just as we gave up: hand it on
                    self._release_locked()
                else:
                    self._waiting.remove(ticket)
            if isinstance(exc, TimeoutError):
                raise DeadlineExceededError from None
            raise

    def release(self) -> None:
        """Give a slot back (from any thread): to the first waiter whose loop still runs, else free it."""
        with self._lock:
            self._release_locked()

    def _release_locked(self) -> None:
        while self._waiting:
            ticket = self._waiting.popleft()
            try:
                ticket.loop.call_soon_threadsafe(_grant, ticket.future)
            except RuntimeError:  # its event loop is closed: that waiter is gone
                continue
            ticket.granted = True
            return
        self._running -= 1
