"""Failure handling shared by every HTTP adapter, and the engine's fail-closed / fail-open policies.

Real servers on 127.0.0.1: a fault server with one endpoint per failure, a subprocess killed
mid-request, and a proxy that injects failures in front of the real llama.cpp server and the
real reward service. Every case is bounded in time.
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time

import pytest

from stars_guard import STARSConfig, STARSEngine
from stars_guard.adapters import OpenAICompletionsBackend, TEIRewardModel
from stars_guard.adapters._http import HTTPClient, RetryPolicy, Timeouts, retry_after_seconds
from stars_guard.errors import BackendError, RewardError
from stars_guard.events import CandidateJudged, Finished, TextEmitted
from tests.adapters import servers

FAST = RetryPolicy(max_retries=2, backoff_base_s=0.05, backoff_max_s=0.2)
PROMPT = "How do I keep my houseplants alive while I am on holiday?"


@pytest.fixture(scope="module")
def faults():
    with servers.ThreadedServer(servers.fault_app()) as server:
        yield server


def client(url: str, **kwargs) -> HTTPClient:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("timeouts", Timeouts(connect_s=1.0, read_s=2.0))
    return HTTPClient(url, error_type=BackendError, service="test server", **kwargs)


def calls(server, name: str) -> int:
    return server.server.config.app.state.calls.get(name, 0)


def test_500_then_200_is_one_retry(faults):
    with client(faults.url) as http:
        result = http.post("/flaky", {})
    assert result.data == {"ok": True, "attempt": 2} and result.retries == 1
    assert calls(faults, "flaky") == 2


def test_429_waits_for_retry_after(faults):
    started = time.monotonic()
    with client(faults.url) as http:
        result = http.post("/limited", {})
    waited = time.monotonic() - started
    assert result.retries == 1 and result.data["attempt"] == 2
    assert 1.0 <= waited < 3.0, waited  # the server's Retry-After: 1, not our 50 ms backoff


def test_429_asking_for_too_long_fails_at_once(faults):
    started = time.monotonic()
    with client(faults.url) as http, pytest.raises(BackendError, match="retry after 3600s") as error:
        http.post("/limited-long", {})
    assert time.monotonic() - started < 1.0 and error.value.status_code == 429


def test_422_is_not_retried_and_the_servers_message_is_surfaced(faults):
    with client(faults.url) as http, pytest.raises(BackendError) as error:
        http.post("/reject", {"inputs": "x"})
    assert "422" in str(error.value)
    assert "`temperature` must be strictly positive (validation)" in str(error.value)
    assert error.value.retries == 0 and calls(faults, "reject") == 1


def test_persistent_500_gives_up_after_the_retries(faults):
    with client(faults.url) as http, pytest.raises(BackendError, match=r"failed after 3 attempts \(HTTP 500: internal"):
        http.post("/always-500", {})
    assert calls(faults, "always-500") == 3


def test_slow_server_times_out(faults):
    started = time.monotonic()
    with (
        client(faults.url, timeouts=Timeouts(connect_s=1.0, read_s=0.5)) as http,
        pytest.raises(BackendError, match="timed out"),
    ):
        http.post("/slow", {})
    assert time.monotonic() - started < 2.0


def test_malformed_json_is_an_error_not_a_crash(faults):
    with client(faults.url) as http, pytest.raises(BackendError, match="malformed JSON"):
        http.post("/malformed", {})


def test_connection_refused_is_retried_with_backoff_then_reported():
    port = servers.free_port()  # nothing listens there
    slept: list[float] = []
    with (
        client(f"http://127.0.0.1:{port}", sleep=slept.append, seed=0) as http,
        pytest.raises(BackendError, match=r"failed after 3 attempts.*connection failed") as error,
    ):
        http.get("/anything")
    assert error.value.status_code is None
    assert len(slept) == 2 and 0.025 <= slept[0] <= 0.05 and 0.05 <= slept[1] <= 0.1  # base*2**n, jittered


def test_server_killed_mid_request(tmp_path):
    port = servers.free_port()
    slow = servers.ServerProcess(
        [sys.executable, "-m", "tests.adapters.servers", "slow", "--port", str(port)], port, "/health", timeout=30
    )
    outcome: dict[str, object] = {}
    with slow:

        def request() -> None:
            started = time.monotonic()
            try:
                with client(slow.url, timeouts=Timeouts(connect_s=1.0, read_s=20.0)) as http:
                    http.post("/slow", {})
            except BackendError as exc:
                outcome["error"] = exc
            outcome["seconds"] = time.monotonic() - started

        worker = threading.Thread(target=request)
        worker.start()
        time.sleep(0.5)  # the request is now in flight
        slow.kill()
        worker.join(timeout=15)
    assert not worker.is_alive()
    assert isinstance(outcome.get("error"), BackendError), outcome
    assert "connection failed" in str(outcome["error"])
    assert outcome["seconds"] < 5


def test_backoff_and_retry_after_parsing():
    policy = RetryPolicy(backoff_base_s=0.1, backoff_max_s=1.0, jitter=0.5)
    rng = random.Random(1)
    for attempt in range(8):
        ceiling = min(1.0, 0.1 * 2**attempt)
        assert ceiling * 0.5 <= policy.backoff(attempt, rng) <= ceiling
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


# Through the adapters and the engine ---------------------------------------------------------------


@pytest.fixture(scope="module")
def flaky_llama(llama_cpp_python_server):
    plan = servers.FaultPlan()
    with servers.ThreadedServer(servers.proxy_app(llama_cpp_python_server.url, plan)) as proxy:
        yield proxy, plan


def test_backend_retries_reach_the_statistics(flaky_llama, lm_dir, guard):
    proxy, plan = flaky_llama
    backend = OpenAICompletionsBackend(proxy.url, tokenizer=lm_dir, retry=FAST, token_prompts=False, n_choices=False)
    plan.script("pass", 503, (429, "0"))  # /v1/models, then the first two completions fail once each
    try:
        config = STARSConfig(seed=1, max_new_tokens=16, candidates_per_round=1, temperature=0.0)
        result = STARSEngine(backend, guard, config).run(PROMPT)
    finally:
        backend.close()
    assert result.text.strip()
    assert result.stats.backend_retries == 2


@pytest.fixture()
def flaky_rewards(reward_service):
    plan = servers.FaultPlan()
    with servers.ThreadedServer(servers.proxy_app(reward_service.url, plan)) as proxy:
        yield TEIRewardModel(proxy.url, max_batch_size=4, retry=FAST), plan


def run_events(backend, reward, **config):
    engine = STARSEngine(backend, reward, STARSConfig(seed=4, max_new_tokens=48, segment_size=8, **config))
    events, error = [], None
    try:
        events.extend(engine.stream(PROMPT))
    except RewardError as exc:
        error = exc
    return events, error


def test_reward_service_down_fail_closed_raises_and_emits_nothing_unscored(flaky_rewards, llamacpp_backend):
    reward, plan = flaky_rewards
    plan.script("pass", "pass", then=503)  # two scored rounds, then the service is gone
    events, error = run_events(llamacpp_backend, reward)
    assert isinstance(error, RewardError) and "503" in str(error)
    emitted = "".join(event.text for event in events if isinstance(event, TextEmitted))
    judged = [event for event in events if isinstance(event, CandidateJudged)]
    accepted = "".join(event.text for event in judged if event.accepted or event.fallback)
    assert all(not math.isnan(event.reward) for event in judged)
    assert accepted.startswith(emitted)  # every emitted character was scored and accepted
    assert not any(isinstance(event, Finished) for event in events)
    assert plan.calls >= 3 + FAST.max_retries  # it did retry before giving up


def test_reward_service_down_fail_closed_refuse_ends_with_the_refusal(flaky_rewards, llamacpp_backend):
    reward, plan = flaky_rewards
    plan.script("pass", then=503)
    events, error = run_events(llamacpp_backend, reward, reward_error_action="refuse")
    assert error is None
    result = events[-1].result
    assert result.stats.refused and result.finish_reason == "refusal"
    assert result.text.endswith(STARSConfig().refusal_message)
    assert result.stats.reward_errors == 1


def test_reward_service_down_fail_open_continues_flagged(llamacpp_backend):
    down = TEIRewardModel(f"http://127.0.0.1:{servers.free_port()}", max_batch_size=4, retry=FAST)
    events, error = run_events(llamacpp_backend, down, on_reward_error="fail_open")
    assert error is None
    result = events[-1].result
    assert result.text.strip() and not result.stats.refused
    assert result.stats.reward_errors == result.stats.reward_calls >= 1
    assert result.stats.mean_accepted_reward is None  # nothing was scored
    assert all(math.isnan(event.reward) for event in events if isinstance(event, CandidateJudged))
