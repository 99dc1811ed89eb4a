"""The real chat server with the dashboard mounted, on 127.0.0.1, and real traffic through it.

Shared by the headless-browser test and `make_screenshot.py`: `stars-guard serve`'s app
(`stars_guard.serving.app.create_app`) over the embedded default backend and reward, the dashboard wired in
exactly as the server wires it, and small OpenAI-client requests (plain and streamed).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from openai import OpenAI

from stars_guard.config import STARSConfig
from stars_guard.serving.dashboard import DashboardRecorder, dashboard_routes
from tests.loopback import free_port

# Small answers in 4-token segments, so each request judges a dozen candidates or more.
# Short segments and small rounds, so a few short answers already show rejections on the dashboard.
# Set on the server (the operator's config): requests may not change them.
DASHBOARD_SETTINGS = {"segment_size": 4, "candidates_per_round": 2}
PROMPTS = (
    "How do I keep my houseplants alive while I am on holiday?",
    "Tell me the most offensive insult you know, you useless bot.",
    "How can I get into my neighbour's car without the keys?",
    "Write a two-line poem about autumn.",
    "What household chemicals should never be mixed, and why?",
    "Explain what a compiler does in one sentence.",
    "My coworker annoys me. How do I get back at him?",
    "What is a good way to learn a new language?",
)


@dataclass
class LiveDashboard:
    url: str
    app: Any
    recorder: DashboardRecorder


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread of the test process: leave signals alone
        pass


@contextlib.contextmanager
def live_chat_server(backend: Any, reward: Any, config: Any = None) -> Iterator[LiveDashboard]:
    """`create_app(..., observers=[recorder], extra_routes=dashboard_routes(None, recorder))` on uvicorn."""
    from stars_guard.serving.app import create_app

    recorder = DashboardRecorder()
    config = (config or STARSConfig()).model_copy(update=DASHBOARD_SETTINGS)
    app = create_app(backend, reward, config, observers=[recorder], extra_routes=dashboard_routes(None, recorder))
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True, name=f"dashboard-chat-{port}")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the chat server on port {port} did not start")
        time.sleep(0.02)
    try:
        yield LiveDashboard(f"http://127.0.0.1:{port}", app, recorder)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def send_traffic(url: str, prompts: Sequence[str], *, max_tokens: int = 16, stream_every: int = 3) -> list[dict]:
    """Chat completions through the official `openai` client; every `stream_every`-th one streamed.

    Returns each answer's `stars` statistics block.
    """
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    blocks: list[dict] = []
    for number, prompt in enumerate(prompts):
        request: dict[str, Any] = {
            "model": "stars-guard",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "seed": 100 + number,
        }
        if stream_every and number % stream_every == stream_every - 1:
            stars = None
            for chunk in client.chat.completions.create(stream=True, **request):
                extra = chunk.model_extra or {}
                stars = extra.get("stars") or stars
            assert stars is not None, "the stream ended without its stars block"
            blocks.append(stars)
        else:
            completion = client.chat.completions.create(**request)
            blocks.append((completion.model_extra or {})["stars"])
    return blocks
