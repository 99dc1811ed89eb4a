"""Doubles and servers for the chat service tests.

`ServerBackend` opens a fresh scripted generation per request (the unit tests' `ScriptedGeneration`,
one character per token), optionally slowed down or held at a gate, and keeps every generation so
tests can check what the worker did after a client left. `LiveServer` runs an app on uvicorn in a
daemon thread on 127.0.0.1 (a real socket: disconnects and concurrency behave as in production);
`ServeProcess` runs the real `stars-guard serve` command.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from stars_guard.config import STARSConfig
from stars_guard.messages import ChatMessage
from tests.doubles.scripted import EOS, ScriptedGeneration, ScriptedReward
from tests.loopback import ServerProcess, free_port
from tests.loopback import ThreadedServer as LiveServer

Script = Callable[[list[ChatMessage]], list[list[str]]]


def two_segments(_: list[ChatMessage]) -> list[list[str]]:
    return [["Hello there, ", "spare one, "], ["friend." + EOS, "spare two." + EOS]]


class ServerBackend:
    """A backend whose every `open` starts a new scripted generation (see the module docstring)."""

    model_name = "scripted-lm"

    def __init__(
        self,
        script: Script = two_segments,
        *,
        delay_s: float = 0.0,
        gate: threading.Event | None = None,
        open_error: BaseException | None = None,
    ) -> None:
        self.script = script
        self.delay_s = delay_s
        self.gate = gate
        self.open_error = open_error
        self.generations: list[ScriptedGeneration] = []
        self.opened_with: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def open(self, messages: Sequence[ChatMessage], **params: Any) -> ScriptedGeneration:
        if self.open_error is not None:
            raise self.open_error
        generation = ScriptedGeneration(self.script(list(messages)), on_draft=self._on_draft)
        with self._lock:
            self.generations.append(generation)
            self.opened_with.append({"messages": list(messages), **params})
        return generation

    def _on_draft(self) -> None:
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise RuntimeError("the test never opened the gate")
        if self.delay_s:
            time.sleep(self.delay_s)


def marker_reward(marker: str = "FORBIDDEN") -> ScriptedReward:
    """1.0 for text without `marker`, 0.0 with it."""
    return ScriptedReward(lambda text: 0.0 if marker in text else 1.0)


class FailingReward:
    """Scores 1.0 until call number `fail_at` (1-based), which raises, as a reward service going down."""

    name = "failing"

    def __init__(self, fail_at: int = 1) -> None:
        self.fail_at = fail_at
        self.calls = 0

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise ConnectionError("reward service at http://10.0.0.7:8081 refused the connection")
        return [1.0] * len(responses)


def test_config(**overrides: Any) -> STARSConfig:
    """A fixed threshold of 0.5 (alpha=1), K=2, so scripted rewards decide exactly what passes."""
    values: dict[str, Any] = {
        "segment_size": 16,
        "candidates_per_round": 2,
        "max_attempts": 4,
        "max_new_tokens": 64,
        "threshold_mode": "absolute",
        "reward_threshold": 0.5,
        "alpha": 1.0,
        "segment_budget": "flat",  # scripted rounds: K candidates each, judged in index order
        "round_selection": "first",
    }
    return STARSConfig(**{**values, **overrides})


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


__all__ = [
    "EOS",
    "FailingReward",
    "LiveServer",
    "ServeProcess",
    "ServerBackend",
    "marker_reward",
    "test_config",
    "wait_until",
]


class ServeProcess(ServerProcess):
    """`stars-guard serve` through the real command line in a subprocess; ready once /health answers.

    Always stopped (SIGTERM, then SIGKILL) on exit; a server that fails to start raises with its log.
    """

    def __init__(self, *args: str, api_key: str | None = None, timeout: float = 180) -> None:
        port = free_port()
        env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        super().__init__(
            [sys.executable, "-m", "stars_guard.cli", "serve", "--port", str(port), *args],
            port,
            "/health",
            timeout=timeout,
            env=env,
            name="stars-guard serve",
        )
        self.env.pop("STARS_GUARD_SERVE_API_KEY", None)
        if api_key is not None:
            self.env["STARS_GUARD_SERVE_API_KEY"] = api_key  # the variable, as operators are told to set it
