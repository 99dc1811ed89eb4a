"""Loopback servers for tests: free ports on 127.0.0.1, an ASGI app on uvicorn in a thread, and a
server in a subprocess."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn

from stars_guard.engines import EngineProcess

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThreadedServer:
    """An ASGI app served by uvicorn in a daemon thread (in this process)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="error", lifespan="on", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"uvicorn-{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"in-thread server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class ServerProcess(EngineProcess):
    """A server in a subprocess, run from the repository root: the package's `EngineProcess`."""

    def __init__(
        self,
        args: Sequence[str],
        port: int,
        ready_path: str,
        *,
        timeout: float = 120,
        env: dict | None = None,
        name: str | None = None,
    ) -> None:
        name = name or f"server {list(args)[:3]}"
        super().__init__(args, port, name=name, timeout=timeout, env=env, ready_path=ready_path, cwd=REPO)
