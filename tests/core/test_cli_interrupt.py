"""Ctrl-C during `stars-guard chat`: the flag that survives a KeyboardInterrupt Python drops."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from stars_guard import cli


class _SignalsInFinalizer:
    """Sends SIGINT from `__del__`: the handler's KeyboardInterrupt is raised inside the finalizer,
    where CPython reports it as unraisable and drops it."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # give the interpreter bytecode boundaries to run the handler here
            pass


def test_an_interrupt_dropped_in_a_finalizer_still_sets_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    dropped: list[type[BaseException]] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    with cli._interrupt_flag() as interrupted:
        _SignalsInFinalizer()  # freed at once: __del__ runs here, and Python drops its KeyboardInterrupt
        assert interrupted.is_set()
    assert dropped == [KeyboardInterrupt]


def test_the_previous_sigint_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    with cli._interrupt_flag() as interrupted:
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
    assert not interrupted.is_set()
