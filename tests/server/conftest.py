"""Fixtures of the chat service tests (doubles live in `tests.server.doubles`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.server.doubles import LiveServer


@pytest.fixture
def live() -> Iterator[Callable[[Any], LiveServer]]:
    """`live(app)` starts `app` on a real socket; every server started is stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(LiveServer(app))
