"""Servers and helpers for the chat service tests; the scripted doubles live in `tests.doubles`.

`ServerBackend` (re-exported from there) opens a fresh scripted generation per request, optionally
slowed down or held at a gate, and keeps every generation so tests can check what the worker did
after a client left. `LiveServer` runs an app on uvicorn in a daemon thread on 127.0.0.1 (a real
socket: disconnects and concurrency behave as in production); `ServeProcess` runs the real
`stars-guard serve` command.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from stars_guard.config import STARSConfig
from tests.doubles import EOS, FailingReward, ServerBackend, marker_reward, two_segments
from tests.loopback import ServerProcess, free_port
from tests.loopback import ThreadedServer as LiveServer


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


def streamed_answer(body: str) -> tuple[str, str | None]:
    """An event stream's answer: the text of its content deltas, and the last finish reason."""
    text, finish = "", None
    for block in body.split("\n\n"):
        if not block.startswith("data: {"):
            continue
        for choice in json.loads(block.removeprefix("data: ")).get("choices", []):
            text += choice.get("delta", {}).get("content") or ""
            finish = choice.get("finish_reason") or finish
    return text, finish


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
    "free_port",
    "marker_reward",
    "streamed_answer",
    "test_config",
    "two_segments",
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
