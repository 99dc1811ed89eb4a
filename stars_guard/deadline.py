"""A request's deadline, carried to every call it makes without threading it through each signature.

The engine knows a request's time budget; the HTTP client deep inside an adapter is what can block
past it. A context variable joins the two: the engine runs each backend and reward call inside
`deadline_scope(deadline)`, and `stars_guard.adapters._http` caps every attempt's timeouts at `remaining()`.
Deadlines are absolute, on the `time.monotonic()` clock, so nested scopes compose by `min`.

Context variables do not cross into a plain `ThreadPoolExecutor`'s workers; adapters that fan a call
out over threads use `ContextThreadPool`, whose tasks run in a copy of the submitter's context.

Core module: stdlib only.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")
_E = TypeVar("_E", bound=BaseException)

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("stars_guard_deadline", default=None)


class DeadlineExceeded(Exception):
    """Marks an error raised because the request's deadline (time budget) was spent, not because a
    server failed. Raised mixed into the caller's typed error (see `deadline_error`), so existing
    `except BackendError` / `except RewardError` handlers still catch it."""


@contextlib.contextmanager
def deadline_scope(at: float | None) -> Iterator[float | None]:
    """Bound every call made inside the block by `at` (a `time.monotonic()` instant).

    `None` adds no bound. Nested scopes keep the earlier deadline, so an inner call can never
    extend its caller's. Yields the deadline in force. Open it around one synchronous call, never
    across a `yield`: the variable belongs to the context that set it.
    """
    outer = _DEADLINE.get()
    effective = outer if at is None else at if outer is None else min(outer, at)
    token = _DEADLINE.set(effective)
    try:
        yield effective
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> float | None:
    """The deadline in force (a `time.monotonic()` instant), or None when unbounded."""
    return _DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before the deadline (0.0 once it has passed), or None when unbounded."""
    at = _DEADLINE.get()
    return None if at is None else max(0.0, at - time.monotonic())


def expired() -> bool:
    """True when a deadline is in force and has passed."""
    left = remaining()
    return left is not None and left <= 0.0


@functools.cache
def _deadline_type(error_type: type[_E]) -> type[_E]:
    # Same name as the base, so logs and telemetry keep naming the familiar error type.
    return type(error_type.__name__, (error_type, DeadlineExceeded), {"__module__": __name__})


def deadline_error(error_type: type[_E], message: str) -> _E:
    """An `error_type` instance that is also a `DeadlineExceeded` (for `except` clauses of either kind)."""
    return _deadline_type(error_type)(message)


def is_deadline_error(error: BaseException) -> bool:
    """True when `error`, or an error it was raised from, is a `DeadlineExceeded`.

    The chain is followed because wrappers re-raise (e.g. the engine's `RewardError(...) from exc`).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, DeadlineExceeded):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class ContextThreadPool(ThreadPoolExecutor):
    """A `ThreadPoolExecutor` whose tasks run in a copy of the submitting thread's context, so the
    caller's deadline (and any other context variable) bounds the work it fans out."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        context = contextvars.copy_context()
        return super().submit(context.run, fn, *args, **kwargs)  # type: ignore[arg-type]


__all__ = [
    "ContextThreadPool",
    "DeadlineExceeded",
    "current_deadline",
    "deadline_error",
    "deadline_scope",
    "expired",
    "is_deadline_error",
    "remaining",
]
