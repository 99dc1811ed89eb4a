"""Fixtures of the chat service tests (doubles live in `tests.serving.doubles`)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.serving.doubles import LiveServer


@pytest.fixture
def live() -> Iterator[Callable[[Any], LiveServer]]:
    """`live(app)` starts `app` on a real socket; every server started is stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(LiveServer(app))


@pytest.fixture
def gate(live: Callable[[Any], LiveServer]) -> Iterator[threading.Event]:
    """An event a `ServerBackend(gate=...)` waits on in every draft; opened at teardown, before servers stop."""
    event = threading.Event()
    yield event
    event.set()
