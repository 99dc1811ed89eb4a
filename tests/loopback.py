"""Loopback servers for tests: free ports on 127.0.0.1, an ASGI app on uvicorn in a thread, and a
server in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn

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


class ServerProcess:
    """A server in a subprocess, ready once `ready_path` answers 200; always stopped on exit."""

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
        self.args = list(args)
        self.name = name or f"server {self.args[:3]}"
        self.port = port
        self.ready_path = ready_path
        self.timeout = timeout
        self.env = {**os.environ, **(env or {})}
        self.log = tempfile.NamedTemporaryFile(prefix="stars-test-server-", suffix=".log", delete=False)  # noqa: SIM115 (open for the server's life)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        """Launch the process without waiting for it (`with` then waits until it is ready)."""
        if self.process is None:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(
                self.args, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env, start_new_session=True
            )
        return self

    def __enter__(self) -> ServerProcess:
        self.start()
        assert self.process is not None
        deadline = self.started_at + self.timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready after {self.timeout}s:\n{self.tail()}")
            time.sleep(0.2)

    def __exit__(self, *_: object) -> None:
        self.stop()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL: the way a crashed or OOM-killed server disappears."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])
