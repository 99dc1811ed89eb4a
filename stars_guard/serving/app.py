"""`stars-guard serve`: STARS behind the OpenAI chat completions API, as a Starlette app.

Routes (handlers are module functions; what they share lives on `request.app.state`):

- `POST /v1/chat/completions`: the OpenAI request (`schema`), admitted and run on a worker
  (`service`), answered as a `chat.completion` or as `chat.completion.chunk` server-sent events
  carrying accepted text only (`responses`, `sse`), ending in `data: [DONE]`;
- `GET /v1/models`, `GET /v1/models/{id}`, `GET /health` (always open), `GET /metrics` (Prometheus).

Errors are OpenAI-shaped (`errors`); `middleware` checks the API key and the body size. One
`ServeSettings` (`settings`) configures both `create_app` and `serve`. Statistics go through one
`RejectionStats` per app with a `PrometheusExporter` first among its observers, so `/metrics`
and any dashboard observer see the same decisions. No prompt or answer text reaches a metric
label or the default log (request id, status, tokens and latency only).

This package is an I/O edge (starlette, uvicorn); nothing in the core imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stars_guard.capabilities import reward_capabilities
from stars_guard.config import STARSConfig
from stars_guard.errors import BackendError
from stars_guard.events import Finished, STARSResult, TextEmitted
from stars_guard.protocols import Backend, RewardModel, find_wrapper
from stars_guard.serving.batching import BatchingReward
from stars_guard.serving.errors import OpenAIError, error_for
from stars_guard.serving.lockstep import LockstepBackend, supports_lockstep
from stars_guard.serving.metrics import register_server_metrics
from stars_guard.serving.middleware import BearerAuth, BodySizeLimit
from stars_guard.serving.responses import AnswerParts, Chunks, completion_body
from stars_guard.serving.schema import ChatRequest, parse_chat_request, parse_json
from stars_guard.serving.service import OPENED, ChatService, Failure, Job
from stars_guard.serving.settings import ServeSettings
from stars_guard.serving.sse import ClientGone, EventStream, sse_event, unless_gone, wait_disconnect
from stars_guard.telemetry import PrometheusExporter
from stars_guard.telemetry.aggregator import RejectionStats

logger = logging.getLogger(__name__)


# Chat completions --------------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    """Parse, admit, run on a worker, answer (the module docstring has the whole path)."""
    state = request.app.state
    started = time.monotonic()
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    try:
        body = parse_json(await request.body())  # BodySizeLimit: a 413 while reading
        chat = parse_chat_request(
            body,
            state.config,
            policy=state.override_policy,
            client_system=state.settings.client_system,
            system_prompt=state.settings.system_prompt,
        )
    except OpenAIError as exc:
        _log_finish(request_id, exc.status, started)
        return exc.response(request_id)
    return await _answer(request, state.service, chat, request_id, started)


async def _answer(
    request: Request, service: ChatService, chat: ChatRequest, request_id: str, started: float
) -> Response:
    """The answer to a parsed request; a client that leaves before it is ready cancels the work."""
    deadline = started + service.settings.request_timeout_s
    watcher = asyncio.ensure_future(wait_disconnect(request.receive))
    job: Job | None = None
    handed_over = False  # to the event stream, which then owns the job and the disconnect
    try:
        await unless_gone(service.admit(deadline - time.monotonic()), watcher)
        job = service.launch(chat, request_id, deadline)
        model = chat.model or service.model_name
        created = int(time.time())
        if chat.stream:
            # The prompt was accepted (OPENED), or the engine answered without opening it (a refusal
            # before drafting: its text is the first event, and the stream must carry it).
            item = await unless_gone(job.events.get(), watcher)
            if isinstance(item, Failure):
                raise error_for(item.error)
            first = () if item is OPENED else (item,)
            watcher.cancel()  # the stream listens for the disconnect from here on
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            handed_over = True
            return EventStream(
                _stream(job, Chunks(request_id, created, model), started, first),
                on_disconnect=job.cancel,
                headers={"x-request-id": request_id},
            )
        while True:
            item = await unless_gone(job.events.get(), watcher)
            if isinstance(item, Failure):
                raise error_for(item.error)
            if isinstance(item, Finished):
                _log_finish(request_id, 200, started, item.result)
                body = completion_body(request_id, created, model, item.result, chat.config.seed, chat.constraint)
                return JSONResponse(body, headers={"x-request-id": request_id})
    except OpenAIError as exc:
        if job is not None:
            job.cancel()
        _log_finish(request_id, exc.status, started)
        return exc.response(request_id)
    except ClientGone:
        if job is None:
            service.count("cancelled")  # left while queued: nothing ran
        else:
            job.cancel()  # the worker stops at its next event and counts it
        _log_finish(request_id, 499, started)
        return Response(status_code=499)
    finally:
        if not handed_over:
            watcher.cancel()
            if job is not None:
                job.cancel()  # no-op once finished; stops the worker on any other way out


async def _stream(job: Job, chunks: Chunks, started: float, first: tuple[Any, ...] = ()) -> AsyncIterator[bytes]:
    """The event stream's body: a role chunk, one chunk per accepted segment (a tool call: one chunk
    once it is whole), the last chunk, OpenAI's usage chunk when asked for, `[DONE]`.

    `first` holds an event already taken from the job (one that came before any prompt was opened).
    A failure once the stream has started is an `error` event (the status line was sent already).
    """
    status, result = 200, None
    pending = list(first)
    chat = job.request
    parts = AnswerParts(chat.constraint)
    try:
        yield chunks.delta({"role": "assistant", "content": ""})
        while True:
            item = pending.pop(0) if pending else await job.events.get()
            if isinstance(item, TextEmitted):
                for delta in parts.feed(item.text):
                    yield chunks.delta(delta)
            elif isinstance(item, Finished):
                result = item.result
                for delta in parts.finish():
                    yield chunks.delta(delta)
                yield chunks.last(result, chat.config.seed, parts, chat.include_usage)
                if chat.include_usage:
                    yield chunks.usage_chunk(result)
                break
            elif isinstance(item, Failure):
                error = error_for(item.error)
                status = error.status
                yield sse_event(error.body())
                break
        yield sse_event("[DONE]")
    finally:
        if result is None and status == 200:
            status = 499
        job.cancel()  # no-op once finished; otherwise the client left mid-stream
        _log_finish(job.request_id, status, started, result, stream=True)


def _log_finish(
    request_id: str, status: int, started: float, result: STARSResult | None = None, stream: bool = False
) -> None:
    """One line per request: id, status, token counts, finish reason and latency; never any text."""
    tokens = (
        f" prompt_tokens={result.stats.prompt_tokens} completion_tokens={result.stats.tokens_emitted}" if result else ""
    )
    finish = f" finish={result.finish_reason}" if result else ""
    latency = time.monotonic() - started
    logger.info("%s status=%d stream=%s%s%s latency=%.3fs", request_id, status, stream, tokens, finish, latency)


# The other routes --------------------------------------------------------------------------------


def _model_card(service: ChatService) -> dict[str, Any]:
    return {"id": service.model_name, "object": "model", "created": int(service.started), "owned_by": "stars-guard"}


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(request.app.state.service)]})


async def get_model(request: Request) -> Response:
    service: ChatService = request.app.state.service
    name = request.path_params["model"]
    if name != service.model_name:
        return OpenAIError(404, f"the model {name!r} does not exist", param="model", code="model_not_found").response()
    return JSONResponse(_model_card(service))


async def health(request: Request) -> Response:
    return JSONResponse(request.app.state.service.health())


async def metrics(request: Request) -> Response:
    exporter: PrometheusExporter = request.app.state.exporter
    return Response(exporter.render(), headers={"Content-Type": exporter.content_type})


async def _openai_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return exc.response()


async def _http_error(_: Request, exc: Exception) -> Response:
    """Starlette's own 404 / 405 in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return OpenAIError(exc.status_code, str(exc.detail), type=error_type, code=None, headers=exc.headers).response()


async def _internal_error(_: Request, exc: Exception) -> Response:
    logger.error("unhandled error: %r", exc)
    return error_for(exc).response()


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    service: ChatService = app.state.service
    service.start()
    try:
        yield
    finally:
        service.stop()


# Wiring ------------------------------------------------------------------------------------------


def create_app(
    backend: Backend,
    reward: RewardModel,
    config: STARSConfig | None = None,
    settings: ServeSettings | None = None,
    **changes: Any,
) -> Starlette:
    """The ASGI app serving STARS over the OpenAI chat API (see the module docstring).

    `settings` (default `ServeSettings()`) says how it runs; `changes` are `ServeSettings` fields
    over it (`create_app(backend, reward, api_key="...", max_concurrent=4)`; an unknown name is a
    `TypeError`). `app.state` exposes `service` (counters, admission), `stats` (`RejectionStats`),
    `exporter` (`PrometheusExporter`), `config`, `override_policy` and `settings`.
    """
    config = config or STARSConfig()
    settings = (settings or ServeSettings()).changed(**changes)
    exporter = PrometheusExporter()
    stats = RejectionStats(observers=[exporter, *settings.observers])
    if settings.lockstep:
        backend, reward = with_lockstep(backend, reward)
    lockstep = find_wrapper(backend, LockstepBackend)
    timed_backend, timed_reward = exporter.instrument(backend, reward)
    service = ChatService(
        timed_backend, timed_reward, config, stats, settings, lockstep=None if lockstep is None else lockstep.stats
    )
    register_server_metrics(exporter, service)
    middleware = [Middleware(BodySizeLimit, limit=settings.max_body_bytes)]
    if settings.api_key:
        middleware.insert(0, Middleware(BearerAuth, api_key=settings.api_key, open_paths=settings.open_paths))
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *settings.extra_routes,
        ],
        middleware=middleware,
        exception_handlers={OpenAIError: _openai_error, HTTPException: _http_error, Exception: _internal_error},
        lifespan=_lifespan,
    )
    app.state.service = service
    app.state.stats = stats
    app.state.exporter = exporter
    app.state.config = config
    app.state.override_policy = settings.policy
    app.state.settings = settings
    return app


def with_lockstep(backend: Backend, reward: RewardModel) -> tuple[Backend, RewardModel]:
    """`backend` and `reward` set up for lockstep serving where the backend declares batch drafting
    (and is not already a `LockstepBackend`); unchanged otherwise.

    Concurrent requests draft in shared batched rounds, and an in-process scorer that declares
    batched scoring scores each round's candidates together on the scheduler thread. Remote
    scorers (tei:, vllm-classify:) keep one concurrent call per request: no I/O on that thread.
    """
    if find_wrapper(backend, LockstepBackend) is not None or not _batches_drafts(backend):
        return backend, reward
    lockstep = LockstepBackend(backend)
    if reward_capabilities(reward).batched_scoring:
        reward = BatchingReward(reward, runner=lockstep.run_on_scheduler)
    return lockstep, reward


def _batches_drafts(backend: Backend) -> bool:
    """`supports_lockstep`, for a backend whose capabilities may need its server: an OpenAI-compatible
    backend asks the server what it holds, and a server not up yet must not stop the service from
    starting. Remote backends never batch drafts here (their servers batch requests themselves)."""
    try:
        return supports_lockstep(backend)
    except BackendError:
        return False


def serve(
    backend: Backend,
    reward: RewardModel,
    config: STARSConfig | None = None,
    settings: ServeSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    announce: Sequence[str] = (),
    dashboard: bool = True,
    **changes: Any,
) -> None:
    """Run the chat service on uvicorn until interrupted (binds 127.0.0.1 unless told otherwise).

    `settings` and `changes` are `create_app`'s, handed over whole. With `dashboard`, the live
    dashboard (`stars_guard.serving.dashboard`) is mounted at `/dashboard`.
    """
    import uvicorn

    settings = (settings or ServeSettings()).changed(**changes)
    if dashboard:
        from stars_guard.serving.dashboard import DashboardRecorder, dashboard_routes

        recorder = DashboardRecorder()
        # The routes read app.state.stats, which create_app builds.
        settings = settings.adding(observers=[recorder], routes=dashboard_routes(None, recorder))
    app = create_app(backend, reward, config, settings)
    _configure_logging(log_level)
    for line in announce:
        print(line, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def _configure_logging(level: str) -> None:
    """Request lines (id, status, tokens, latency) on stderr beside uvicorn's own log."""
    package = logging.getLogger("stars_guard")
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s %(message)s"))
        package.addHandler(handler)
    package.setLevel(level.upper())
