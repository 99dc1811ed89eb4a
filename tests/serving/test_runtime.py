"""The chat service under load and faults, on a real socket: queueing, deadlines, disconnects, concurrency.

Scripted models keep these fast and exact: a gate holds the backend mid-draft so the test knows
what is running and what waits; a slow backend leaves time to disconnect in the middle of an answer.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from stars_guard.messages import ChatMessage
from stars_guard.overrides import OverridePolicy
from stars_guard.serving.app import create_app
from tests.serving.doubles import EOS, ServerBackend, marker_reward, test_config, wait_until

USER = [{"role": "user", "content": "Tell me something nice."}]


def endless(_: list[ChatMessage]) -> list[list[str]]:
    """Far more rounds than any test lets run: the answer only ends when the worker stops."""
    return [["tick tock "]] * 1000


def chat(url: str, timeout: float = 30, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"messages": USER, **body}, timeout=timeout)


def test_full_queue_answers_429_with_retry_after_and_the_admitted_requests_finish(live, gate):
    app = create_app(ServerBackend(gate=gate), marker_reward(), test_config(), max_concurrent=1, max_queue=1)
    service = app.state.service
    server = live(app)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(chat, server.url)
        wait_until(lambda: service.in_flight == 1, what="the first request to run")
        waiting = pool.submit(chat, server.url)
        wait_until(lambda: service.queued == 1, what="the second request to queue")
        refused = chat(server.url)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_exceeded" and error["code"] == "rate_limit_exceeded"
        health = httpx.get(f"{server.url}/health").json()
        assert (health["in_flight"], health["queued"], health["rejected"]) == (1, 1, 1)
        gate.set()
        assert running.result().status_code == 200
        assert waiting.result().status_code == 200
    assert service.counts["queue_full"] == 1
    wait_until(lambda: service.in_flight == 0, what="the workers to finish")
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'stars_server_rejected_total{reason="queue_full"} 1.0' in metrics


def test_a_request_still_queued_at_its_deadline_gets_503_and_the_running_one_ends_on_time(live, gate):
    app = create_app(
        ServerBackend(gate=gate), marker_reward(), test_config(), max_concurrent=1, max_queue=4, request_timeout_s=0.5
    )
    service = app.state.service
    server = live(app)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(chat, server.url)
        wait_until(lambda: service.in_flight == 1, what="the first request to run")
        started = time.monotonic()
        late = chat(server.url)
        assert late.status_code == 503 and 0.4 < time.monotonic() - started < 3
        assert late.json()["error"]["code"] == "queue_timeout" and late.headers["retry-after"] == "1"
        assert service.queued == 0
        gate.set()
        body = running.result().json()
    # Its deadline passed while the backend was held: the answer ends after the segment in hand.
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["stars"]["finish_reason"] == "time_budget"
    assert body["choices"][0]["message"]["content"] == "Hello there, "


def test_the_deadline_becomes_the_engines_time_budget(live):
    app = create_app(
        ServerBackend(endless, delay_s=0.05),
        marker_reward(),
        test_config(),
        request_timeout_s=0.4,
        override_policy=OverridePolicy(allowed={"max_new_tokens"}),  # more tokens than the deadline allows
    )
    server = live(app)
    started = time.monotonic()
    body = chat(server.url, max_tokens=2000).json()
    assert time.monotonic() - started < 2.0
    assert body["stars"]["finish_reason"] == "time_budget" and body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"].startswith("tick tock ")
    # A shorter budget asked for in the request wins over the deadline.
    body = chat(server.url, max_tokens=2000, stars={"time_budget_s": 0.1}).json()
    assert body["stars"]["finish_reason"] == "time_budget" and body["stars"]["elapsed_s"] < 0.35


def test_stream_disconnect_stops_the_worker_and_closes_the_generation(live):
    backend = ServerBackend(endless, delay_s=0.05)
    app = create_app(backend, marker_reward(), test_config(max_new_tokens=5000))
    service = app.state.service
    server = live(app)
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{server.url}/v1/chat/completions", json={"messages": USER, "stream": True}) as response,
    ):
        assert response.status_code == 200
        contents = []
        for line in response.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line.removeprefix("data: "))["choices"][0]["delta"]
                if delta.get("content"):
                    contents.append(delta["content"])
                    break
    # The client is gone (the connection closed with the body unread).
    assert contents == ["tick tock "]
    (generation,) = backend.generations
    wait_until(lambda: generation.closed, what="the generation to be closed")
    wait_until(lambda: service.in_flight == 0, what="the worker to stop")
    drafted = generation.llm_calls
    time.sleep(0.3)
    assert generation.llm_calls == drafted < 50  # no more rounds after the cancel
    assert service.cancelled == 1
    health = httpx.get(f"{server.url}/health").json()
    assert health["cancelled"] == 1 and health["in_flight"] == 0
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'stars_requests_total{outcome="cancelled"} 1.0' in metrics
    assert 'stars_server_rejected_total{reason="cancelled"} 1.0' in metrics


def test_non_streaming_client_that_gives_up_cancels_its_work_too(live):
    backend = ServerBackend(endless, delay_s=0.05)
    app = create_app(backend, marker_reward(), test_config(max_new_tokens=5000))
    service = app.state.service
    server = live(app)
    with pytest.raises(httpx.ReadTimeout):
        chat(server.url, timeout=0.5)
    (generation,) = backend.generations
    wait_until(lambda: generation.closed, what="the generation to be closed")
    wait_until(lambda: service.in_flight == 0 and service.cancelled == 1, what="the worker to stop")
    drafted = generation.llm_calls
    time.sleep(0.3)
    assert generation.llm_calls == drafted < 50


def test_a_client_that_leaves_the_queue_is_counted_and_never_runs(live, gate):
    backend = ServerBackend(gate=gate)
    app = create_app(backend, marker_reward(), test_config(), max_concurrent=1, max_queue=2)
    service = app.state.service
    server = live(app)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(chat, server.url)
        wait_until(lambda: service.in_flight == 1, what="the first request to run")
        with pytest.raises(httpx.ReadTimeout):
            chat(server.url, timeout=0.3)
        wait_until(lambda: service.queued == 0 and service.cancelled == 1, what="the queued client to be dropped")
        gate.set()
        assert running.result().status_code == 200
    assert len(backend.generations) == 1


def tagged(messages: list[ChatMessage]) -> list[list[str]]:
    """Drafts that encode their request: every segment names the tag of the prompt that asked for it."""
    tag = re.search(r"tag-(\d+)", messages[-1].content).group(1)  # type: ignore[union-attr]
    return [[f"<{tag}:a> ", f"<{tag}:FORBIDDEN> "], [f"<{tag}:b> "], [f"<{tag}:c>" + EOS]]


def test_concurrent_requests_all_complete_unmixed(live):
    app = create_app(
        ServerBackend(tagged, delay_s=0.01), marker_reward(), test_config(), max_concurrent=8, max_queue=32
    )
    server = live(app)

    def ask(index: int) -> tuple[int, str, int]:
        stream = index % 2 == 1
        body = {"messages": [{"role": "user", "content": f"tag-{index}"}], "seed": index, "stream": stream}
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
        if not stream:
            return index, response.json()["choices"][0]["message"]["content"], response.status_code
        text = ""
        for line in response.text.splitlines():
            if line.startswith("data: {"):
                text += json.loads(line.removeprefix("data: "))["choices"][0]["delta"].get("content") or ""
        return index, text, response.status_code

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, range(32)))
    for index, text, status in results:
        assert status == 200
        assert text == f"<{index}:a> <{index}:b> <{index}:c>"
    health = httpx.get(f"{server.url}/health").json()
    assert health["completed"] == 32 and health["rejected"] == 0 and health["in_flight"] == 0
