"""A request's deadline bounds every HTTP call it makes, not only the engine's rounds.

Real loopback servers that hang (or trickle their answer) far longer than the budget, adapters
configured with a 60 s read timeout, and calls made inside `deadline_scope`: each must end in the
adapter's typed error, marked as a deadline expiry, within about the budget. The retry loop is
checked with an injected `sleep`, so nothing here sleeps through a backoff.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from stars_guard.adapters import OpenAICompletionsBackend, TEIRewardModel, TGIBackend
from stars_guard.adapters._http import HTTPClient, RetryPolicy, Timeouts
from stars_guard.deadline import (
    ContextThreadPool,
    DeadlineExceeded,
    current_deadline,
    deadline_error,
    deadline_scope,
    expired,
    is_deadline_error,
    remaining,
)
from stars_guard.errors import BackendError, RewardError
from stars_guard.messages import ChatMessage
from stars_guard.protocols import OpenRequest
from tests.adapters import servers

BUDGET_S = 1.0
HANG_S = 30.0  # far past the budget; the server's shutdown cancels the handler
WELL_UNDER_READ_TIMEOUT_S = 10.0  # generous: the point is "not the 60 s read timeout"
PATIENT = Timeouts(connect_s=5.0, read_s=60.0)
MESSAGES = [ChatMessage("user", "How do I keep my houseplants alive?")]


def stalling_app(*hang: str) -> Starlette:
    """Answers the adapters' probes at once and hangs on the paths in `hang`.

    `/trickle` sends a JSON body one space every 0.1 s for 8 s: each read is quick, the whole is not.
    """

    async def endpoint(request: Request) -> Response:
        path = request.url.path
        if path in hang:
            await asyncio.sleep(HANG_S)
            return JSONResponse({"error": "too late"}, 500)
        if path == "/info":  # TEI and TGI both probe it
            return JSONResponse({"model_id": "stalling", "max_client_batch_size": 8, "max_total_tokens": 4096})
        if path == "/tokenize":  # vLLM's chat rendering
            return JSONResponse({"count": 3, "max_model_len": 4096, "tokens": [1, 2, 3], "token_strs": None})
        if path == "/chat_tokenize":  # TGI's chat rendering
            return JSONResponse(
                {"templated_text": "user: hi\n", "tokenize_response": [{"id": 7, "start": 0, "stop": 9}]}
            )
        if path == "/trickle":

            async def body() -> AsyncIterator[bytes]:
                for _ in range(80):
                    yield b" "
                    await asyncio.sleep(0.1)
                yield b"{}"

            return StreamingResponse(body(), media_type="application/json")
        if path == "/ok":
            return JSONResponse({"ok": True, "text": "x" * 2000})
        return JSONResponse({"error": f"no endpoint {path}"}, 404)  # e.g. /v1/models: optional

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


@pytest.fixture(scope="module")
def stalling() -> Iterator[servers.ThreadedServer]:
    with servers.ThreadedServer(stalling_app("/predict", "/v1/completions", "/generate")) as server:
        yield server


@pytest.fixture(scope="module")
def faults() -> Iterator[servers.ThreadedServer]:
    with servers.ThreadedServer(servers.fault_app()) as server:
        yield server


def assert_spent(error: BaseException, started: float, *, path: str) -> None:
    elapsed = time.monotonic() - started
    assert elapsed < WELL_UNDER_READ_TIMEOUT_S, f"took {elapsed:.1f}s: the deadline did not bound the call"
    assert is_deadline_error(error), error
    message = str(error)
    assert "deadline (time budget) was spent" in message and path in message, message


# The deadline itself ------------------------------------------------------------------------------


def test_no_scope_means_no_deadline():
    assert current_deadline() is None and remaining() is None and not expired()
    with deadline_scope(None) as effective:
        assert effective is None and remaining() is None


def test_nested_scopes_keep_the_tighter_deadline():
    now = time.monotonic()
    with deadline_scope(now + 10):
        with deadline_scope(now + 100) as effective:
            assert effective == current_deadline() == now + 10  # an inner call cannot extend its caller's
        with deadline_scope(now + 1):
            assert current_deadline() == now + 1
            with deadline_scope(None):
                assert current_deadline() == now + 1
        assert current_deadline() == now + 10
        left = remaining()
        assert left is not None and 0 < left <= 10
    assert current_deadline() is None


def test_a_passed_deadline_has_nothing_left():
    with deadline_scope(time.monotonic() - 1):
        assert remaining() == 0.0 and expired()


def test_deadline_errors_are_typed_and_recognised_through_wrappers():
    error = deadline_error(RewardError, "spent")
    assert isinstance(error, RewardError) and isinstance(error, DeadlineExceeded)
    assert type(error).__name__ == "RewardError"
    assert deadline_error(RewardError, "again").__class__ is type(error)  # one class per error type
    try:
        try:
            raise error
        except RewardError as exc:
            raise RewardError(f"reward model 'x' failed: {exc}") from exc  # how the engine wraps
    except RewardError as wrapped:
        assert not isinstance(wrapped, DeadlineExceeded) and is_deadline_error(wrapped)
    assert not is_deadline_error(RewardError("the service is down"))


def test_the_context_pool_carries_the_deadline_into_its_workers():
    at = time.monotonic() + 50
    with ContextThreadPool(max_workers=2) as pool, ThreadPoolExecutor(max_workers=1) as plain:
        with deadline_scope(at):
            carried = pool.submit(current_deadline).result()
            lost = plain.submit(current_deadline).result()
            copied = plain.submit(contextvars.copy_context().run, current_deadline).result()
        assert pool.submit(current_deadline).result() is None  # each task gets its submitter's context
    assert carried == at == copied and lost is None  # why the adapters' pools are ContextThreadPools


# HTTPClient: attempts, backoff, body -------------------------------------------------------------


def client(url: str, *, error_type: type = BackendError, **kwargs) -> HTTPClient:
    return HTTPClient(url, error_type=error_type, service="test server", **kwargs)


def calls(server: servers.ThreadedServer, name: str) -> int:
    return server.server.config.app.state.calls.get(name, 0)


def test_a_backoff_past_the_deadline_is_never_slept(faults):
    slept: list[float] = []
    retry = RetryPolicy(max_retries=3, backoff_base_s=5.0, jitter=0.0)
    before = calls(faults, "always-500")
    with (
        client(faults.url, retry=retry, sleep=slept.append) as http,
        deadline_scope(time.monotonic() + 2.0),
        pytest.raises(BackendError) as info,
    ):
        http.post("/always-500", {})
    assert slept == [] and http.total_retries == 0 and calls(faults, "always-500") == before + 1
    message = str(info.value)
    assert is_deadline_error(info.value) and "HTTP 500" in message and "a retry in 5.00s" in message, message
    assert info.value.status_code is None  # type: ignore[attr-defined]


def test_a_retry_after_past_the_deadline_is_never_slept(faults):
    slept: list[float] = []
    retry = RetryPolicy(max_retries=2, max_retry_after_s=7200.0)
    with (
        client(faults.url, error_type=RewardError, retry=retry, sleep=slept.append) as http,
        deadline_scope(time.monotonic() + 5.0),
        pytest.raises(RewardError) as info,
    ):
        http.post("/limited-long", {})  # 429 with Retry-After: 3600
    assert slept == [] and is_deadline_error(info.value)


def test_backoffs_that_fit_are_slept_and_the_usual_error_follows(faults):
    slept: list[float] = []
    retry = RetryPolicy(max_retries=2, backoff_base_s=0.01, jitter=0.0)
    with (
        client(faults.url, retry=retry, sleep=slept.append) as http,
        deadline_scope(time.monotonic() + 30.0),
        pytest.raises(BackendError, match="failed after 3 attempts") as info,
    ):
        http.post("/always-500", {})
    assert slept == [0.01, 0.02] and not is_deadline_error(info.value)
    assert info.value.status_code == 500  # type: ignore[attr-defined]


def test_a_spent_deadline_makes_no_request(faults):
    before = calls(faults, "ok")
    with (
        client(faults.url) as http,
        deadline_scope(time.monotonic() - 0.1),
        pytest.raises(BackendError, match="before the call") as info,
    ):
        http.get("/ok")
    assert calls(faults, "ok") == before and is_deadline_error(info.value)


def test_a_trickling_answer_is_abandoned_at_the_deadline(stalling):
    with client(stalling.url, timeouts=PATIENT) as http:
        started = time.monotonic()
        with deadline_scope(started + BUDGET_S), pytest.raises(BackendError) as info:
            http.get("/trickle")  # every read takes 0.1 s, far under any timeout; the whole takes 8 s
    assert_spent(info.value, started, path="/trickle")


def test_answers_within_the_deadline_read_as_usual():
    app = GZipMiddleware(stalling_app(), minimum_size=100)  # a compressed body is decoded exactly once
    with (
        servers.ThreadedServer(app) as gzipped,
        client(gzipped.url, timeouts=PATIENT) as http,
        deadline_scope(time.monotonic() + 30.0),
    ):
        result = http.get("/ok")
        with pytest.raises(BackendError, match="HTTP 404") as missing:
            http.get("/nothing-here")
    assert result.data == {"ok": True, "text": "x" * 2000} and result.status_code == 200
    assert result.headers.get("content-encoding") == "gzip"
    assert not is_deadline_error(missing.value)


# Adapters against hanging servers -----------------------------------------------------------------


def test_tei_reward_call_ends_at_the_deadline(stalling):
    reward = TEIRewardModel(stalling.url, timeouts=PATIENT)
    try:
        assert reward.max_batch_size == 8  # the /info probe answers: only /predict hangs
        started = time.monotonic()
        with deadline_scope(started + BUDGET_S), pytest.raises(RewardError) as info:
            reward.score("How do I keep my houseplants alive?", ["Water them every morning."])
        assert_spent(info.value, started, path="/predict")
    finally:
        reward.close()


def test_tei_info_probe_ends_at_the_deadline():
    with servers.ThreadedServer(stalling_app("/info")) as server:
        reward = TEIRewardModel(server.url, timeouts=PATIENT)
        started = time.monotonic()
        with deadline_scope(started + BUDGET_S), pytest.raises(RewardError) as info:
            reward.score("How do I keep my houseplants alive?", ["Water them every morning."])
        reward.close()
    assert_spent(info.value, started, path="/info")


def test_openai_backend_draft_ends_at_the_deadline(stalling):
    # n_choices=False: the K drafts are K concurrent requests from the backend's thread pool.
    backend = OpenAICompletionsBackend(stalling.url, timeouts=PATIENT, token_prompts=True, n_choices=False)
    try:
        generation = backend.open(OpenRequest(MESSAGES, max_new_tokens=32, temperature=1.0, top_p=1.0, seed=0))
        started = time.monotonic()
        with deadline_scope(started + BUDGET_S), pytest.raises(BackendError) as info:
            generation.draft(3, 8)
        assert_spent(info.value, started, path="/v1/completions")
    finally:
        backend.close()


def test_tgi_backend_draft_ends_at_the_deadline(stalling):
    backend = TGIBackend(stalling.url, timeouts=PATIENT)
    try:
        generation = backend.open(OpenRequest(MESSAGES, max_new_tokens=32, temperature=1.0, top_p=1.0, seed=0))
        started = time.monotonic()
        with deadline_scope(started + BUDGET_S), pytest.raises(BackendError) as info:
            generation.draft(2, 8)
        assert_spent(info.value, started, path="/generate")
    finally:
        backend.close()


def test_the_engines_time_budget_bounds_a_hanging_reward_service(stalling):
    """The trust issue's bypass 4, end to end: time_budget_s=1 with a reward service that hangs
    ends the answer at about the budget (not the 60 s read timeout), and nothing unscored goes out."""
    from stars_guard import STARSConfig, STARSEngine
    from tests.doubles import ScriptedBackend

    reward = TEIRewardModel(stalling.url, timeouts=PATIENT)
    for policy in ("fail_closed", "fail_open"):
        config = STARSConfig(time_budget_s=BUDGET_S, on_reward_error=policy, segment_size=4, max_new_tokens=16)
        started = time.monotonic()
        result = STARSEngine(ScriptedBackend([["unscored text"] * 4] * 8), reward, config).run(MESSAGES)
        assert time.monotonic() - started < WELL_UNDER_READ_TIMEOUT_S
        assert result.finish_reason == "time_budget" and result.text == ""
        assert result.stats.reward_errors == 0  # out of time is not a failed scorer
    reward.close()
