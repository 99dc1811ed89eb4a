"""`stars-guard serve`: STARS behind the OpenAI chat completions API.

Chatbot backends that speak the OpenAI API get the same guarded decoding as `STARSChatModel`:

- `POST /v1/chat/completions`: the OpenAI request schema (`messages`, `model`, `max_tokens` /
  `max_completion_tokens`, `temperature`, `top_p`, `stop`, `seed`, `stream`, `n=1`) plus an optional
  `stars` object of `STARSConfig` overrides. Which overrides a client may send at all is the
  operator's `OverridePolicy` (an allowlist: by default only lowering the cost, and the seed), so
  a request can never weaken the guard. Answers are `chat.completion` objects with `usage` and
  a `stars` statistics extension, or `chat.completion.chunk` server-sent events carrying accepted
  text only (rejected candidates never leave the engine), ending in `data: [DONE]`.
- `GET /v1/models`, `GET /health` (always open), `GET /metrics` (Prometheus text format).
- Errors are OpenAI-shaped (`{"error": {"message", "type", "param", "code"}}`).

Each admitted request runs the blocking engine generator in a worker thread (at most
`max_concurrent`), and its events cross to the event loop through an `asyncio.Queue`. Up to
`max_queue` more requests wait in FIFO order; beyond that the answer is 429 with `Retry-After`.
Every request has a deadline (`request_timeout_s`, queue wait included): the time left when it
starts becomes the engine's `time_budget_s`, and a request still queued at its deadline gets a
503. A client that disconnects sets its job's cancel flag; the worker checks it after every
engine event and closes the generator, which releases the backend's generation (KV cache).

Statistics go through one `RejectionStats` per app, with a `PrometheusExporter` first among its
observers, so `/metrics` and any dashboard observer see the same decisions. No prompt or answer
text reaches a metric label or the default log (request id, status, tokens and latency only).

This module is an I/O edge (starlette, uvicorn); nothing in the core imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stars_guard.config import STARSConfig
from stars_guard.engine import STARSEngine
from stars_guard.errors import (
    BackendError,
    ConfigError,
    ContextWindowExceededError,
    InvalidMessagesError,
    RewardError,
)
from stars_guard.events import CandidateJudged, Finished, STARSResult, TextEmitted
from stars_guard.messages import ROLE_ALIASES, ChatMessage, normalize_messages
from stars_guard.overrides import DEFAULT_POLICY, MAX_SEED, LockedOverrideError, OverridePolicy
from stars_guard.protocols import Backend, Generation, RewardModel
from stars_guard.serving.lockstep import LockstepStats
from stars_guard.telemetry import PrometheusExporter
from stars_guard.telemetry.aggregator import RejectionStats, RunInfo, StatsObserver, segment_payload

logger = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 120.0
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_RETRY_AFTER_S = 1
OPEN_PATHS: tuple[str, ...] = ("/health",)
_OPENAI_ROLES = ("system", "developer", "user", "assistant")  # the chat roles the API accepts
# `stars_requests_total{outcome}` and `/health` for requests that ran but ended in a 4xx (the client's
# mistake, e.g. context_length_exceeded): apart from `error`, so client mistakes never page anyone.
INVALID_OUTCOME = "invalid"

FINISH_REASONS = {"stop": "stop", "length": "length", "time_budget": "length", "refusal": "content_filter"}
_SEED_LIMIT = 2**31  # seeds drawn for requests without one; a client may send any seed up to MAX_SEED
_OPENAI_TO_CONFIG = (
    ("max_completion_tokens", "max_new_tokens"),
    ("max_tokens", "max_new_tokens"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("seed", "seed"),
)

T = TypeVar("T")


# Errors ------------------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error answer in OpenAI's shape; raised anywhere in request handling, rendered once."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, request_id: str | None = None) -> JSONResponse:
        headers = {**self.headers, **({"x-request-id": request_id} if request_id else {})}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class QueueFullError(Exception):
    """Every worker is busy and the waiting line is full."""


class DeadlineExceededError(Exception):
    """The request's deadline passed before its work could start."""


def error_for(exc: BaseException) -> OpenAIError:
    """The HTTP answer for a failure of the engine, its backend or its reward model.

    Upstream failures get a short message: the full one (which may name internal hosts) is logged.
    """
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, ContextWindowExceededError):
        return OpenAIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, InvalidMessagesError):
        return OpenAIError(400, str(exc), param="messages", code="invalid_messages")
    if isinstance(exc, LockedOverrideError):
        param = f"stars.{exc.fields[0]}" if exc.fields else "stars"
        return OpenAIError(400, str(exc), param=param, code="locked_parameter")
    if isinstance(exc, ConfigError):
        return OpenAIError(400, str(exc), param="stars", code="invalid_config")
    if isinstance(exc, RewardError):
        return OpenAIError(
            502,
            "the reward model failed and the service is fail-closed: no unchecked text was sent",
            type="server_error",
            code="reward_error",
        )
    if isinstance(exc, BackendError):
        return OpenAIError(502, "the generation backend failed", type="server_error", code="backend_error")
    if isinstance(exc, DeadlineExceededError):
        return OpenAIError(
            503,
            "the request timed out waiting for a worker: the service is overloaded, retry later",
            type="server_error",
            code="queue_timeout",
            headers={"Retry-After": str(DEFAULT_RETRY_AFTER_S)},
        )
    return OpenAIError(500, "internal error while generating the answer", type="server_error", code="internal_error")


# Request parsing (pure) --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completions request: everything the worker needs, nothing of HTTP."""

    turns: list[ChatMessage]
    config: STARSConfig  # per-request config, seed resolved; the deadline is applied when it starts
    stop: list[str] | None
    stream: bool
    model: str | None  # as requested (echoed back); None when the client sent none


def parse_chat_request(
    body: Any,
    base: STARSConfig,
    *,
    policy: OverridePolicy = DEFAULT_POLICY,
    seed_source: Callable[[], int] | None = None,
) -> ChatRequest:
    """Validate an OpenAI chat completions body against `base`; raise `OpenAIError` (400) naming the field.

    Precedence: `base` < the `stars` object < the OpenAI parameters, and `policy` decides which of
    those overrides a client may send at all (a locked one is a 400 `locked_parameter`). Without
    any seed a random one is drawn (and reported in the response), so every answer can be reproduced.
    """
    if not isinstance(body, dict):
        raise OpenAIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    _refuse_unencodable(body)
    turns = _parse_messages(body.get("messages"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise OpenAIError(400, "model must be a string", param="model")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise OpenAIError(400, "user must be a string", param="user")
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise OpenAIError(400, f"only n=1 is supported (got {n!r})", param="n", code="unsupported_parameter")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise OpenAIError(400, "stream must be a boolean", param="stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise OpenAIError(400, "stream_options must be an object", param="stream_options")
    _refuse_unsupported(body)
    stop = _parse_stop(body.get("stop"))
    config = _request_config(base, body, policy)
    if config.seed is None:
        config = config.with_overrides(seed=(seed_source or _random_seed)())
    return ChatRequest(turns=turns, config=config, stop=stop, stream=bool(stream), model=model)


def _random_seed() -> int:
    return secrets.randbelow(_SEED_LIMIT)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_messages(raw: Any) -> list[ChatMessage]:
    if raw is None:
        raise OpenAIError(
            400, "missing required parameter: messages", param="messages", code="missing_required_parameter"
        )
    if not isinstance(raw, list) or not raw:
        raise OpenAIError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    turns: list[dict[str, str]] = []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise OpenAIError(400, f"{where} must be an object with role and content", param=where)
        role = message.get("role")
        if role not in _OPENAI_ROLES:
            raise OpenAIError(
                400,
                f"{where}.role is {role!r}; supported roles: system, user, assistant (no tool messages)",
                param=f"{where}.role",
            )
        turns.append({"role": ROLE_ALIASES[role], "content": _text_content(message.get("content"), role, where)})
    try:
        return normalize_messages(turns)
    except InvalidMessagesError as exc:
        raise OpenAIError(400, str(exc), param="messages", code="invalid_messages") from None


def _text_content(content: Any, role: str, where: str) -> str:
    """String content, or a list of text parts joined by newlines; anything else is refused."""
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if isinstance(content, list):
        texts: list[str] = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise OpenAIError(
                    400,
                    f"{where}.content[{index}] is of type {kind!r}: only text parts ({{'type': 'text', 'text': ...}}) "
                    "are supported",
                    param=f"{where}.content",
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise OpenAIError(
        400,
        f"{where}.content must be a string or a list of text parts, got {type(content).__name__}",
        param=f"{where}.content",
    )


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Features a client would silently lose if ignored: tools, logprobs, structured output."""
    for name in ("tools", "functions"):
        if body.get(name):
            raise OpenAIError(
                400,
                f"{name} are not supported: this endpoint does not call tools",
                param=name,
                code="unsupported_parameter",
            )
    if body.get("logprobs"):
        raise OpenAIError(400, "logprobs are not supported", param="logprobs", code="unsupported_parameter")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise OpenAIError(
            400,
            "only response_format {'type': 'text'} is supported",
            param="response_format",
            code="unsupported_parameter",
        )


def _parse_stop(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    values = [stop] if isinstance(stop, str) else stop
    if not isinstance(values, list) or not all(isinstance(value, str) and value for value in values):
        raise OpenAIError(400, "stop must be a non-empty string or a list of non-empty strings", param="stop")
    return list(values) or None


def _request_config(base: STARSConfig, body: Mapping[str, Any], policy: OverridePolicy) -> STARSConfig:
    """The request's config: `stars` then the OpenAI parameters over `base`, each checked by `policy`.

    Every override is judged against the operator's `base`, never against another override, so
    sending a value twice (`stars.max_new_tokens` and `max_tokens`) cannot widen what is allowed.
    """
    stars = body.get("stars")
    if stars is not None and not isinstance(stars, dict):
        raise OpenAIError(400, "stars must be an object of STARSConfig fields", param="stars")
    stars = dict(stars or {})
    if stars.get("seed") is not None:  # null, as for any field, leaves it unchanged
        _check_seed(stars["seed"], "stars.seed")
    names = {key: f"stars.{key}" for key in stars}
    if stars:
        _apply_policy(policy, base, stars, names)  # the stars object is valid by itself
    openai = _openai_overrides(body)
    names.update({field_name: name for field_name, (name, _) in openai.items()})
    overrides = {**stars, **{field_name: value for field_name, (_, value) in openai.items()}}
    return _apply_policy(policy, base, overrides, names)


def _apply_policy(
    policy: OverridePolicy, base: STARSConfig, overrides: Mapping[str, Any], names: Mapping[str, str]
) -> STARSConfig:
    """`policy.apply`, its errors as 400s whose `param` is the name the client used."""
    try:
        return policy.apply(base, overrides, names=names)
    except LockedOverrideError as exc:
        raise OpenAIError(400, str(exc), param=exc.params[0] if exc.params else None, code="locked_parameter") from None
    except ConfigError as exc:
        fields = _error_fields(exc)
        param = names.get(fields[0].partition(".")[0], "stars") if fields else "stars"
        if not param.startswith("stars"):  # an OpenAI parameter: said by its own name, as OpenAI does
            detail = "; ".join(line.strip().partition(": ")[2] for line in str(exc).splitlines()[1:])
            raise OpenAIError(400, f"invalid value for {param}: {detail}", param=param) from None
        raise OpenAIError(400, str(exc), param=param, code="invalid_config") from None


def _openai_overrides(body: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """The OpenAI parameters that map to config fields: field -> (parameter name, value), type-checked."""
    found: dict[str, tuple[str, Any]] = {}
    for name, field_name in _OPENAI_TO_CONFIG:
        value = body.get(name)
        if value is None or field_name in found:  # max_completion_tokens wins over max_tokens
            continue
        expects_int = field_name in ("max_new_tokens", "seed")
        valid_type = _is_int(value) if expects_int else (_is_int(value) or isinstance(value, float))
        if not valid_type:
            kind = "an integer" if expects_int else "a number"
            raise OpenAIError(400, f"{name} must be {kind}, got {value!r}", param=name)
        if field_name == "seed":
            _check_seed(value, name)
        found[field_name] = (name, value)
    return found


def _check_seed(value: Any, param: str) -> None:
    """Seeds reach the backends' 64-bit generators: anything else must be a 400 here, not a 500 there."""
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
        raise OpenAIError(400, f"{param} must be an integer from 0 to {MAX_SEED}, got {value!r}", param=param)


def _refuse_unencodable(body: Mapping[str, Any]) -> None:
    """Every string of the body must be encodable as UTF-8 (JSON's \\ud800 escapes decode to lone surrogates).

    Such a string would fail later, in a tokenizer or while encoding the answer, as a 500; it is
    the client's mistake, so it is a 400 naming where it is. Iterative: bodies may nest deeply.
    """
    pending: list[tuple[str, Any]] = [("", body)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, str) and not _encodable(value):
            raise _unencodable(where, f"{where} is")
        if isinstance(value, dict):
            for key, item in value.items():
                if not _encodable(key):  # the key itself cannot be shown: name where it is
                    raise _unencodable(where or None, f"a key of {where or 'the request body'} is")
                pending.append((f"{where}.{key}" if where else str(key), item))
        elif isinstance(value, list):
            pending.extend((f"{where}[{index}]", item) for index, item in enumerate(value))


def _encodable(text: Any) -> bool:
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unencodable(param: str | None, subject: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"{subject} not valid Unicode text: it holds a lone surrogate (a \\ud800-\\udfff escape without its pair), "
        "which cannot be encoded as UTF-8",
        param=param,
        code="invalid_text",
    )


def _error_fields(exc: ConfigError) -> list[str]:
    lines = str(exc).splitlines()[1:]
    return [line.strip().partition(":")[0] for line in lines if ":" in line]


# Admission ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Ticket:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    granted: bool = False


def _grant(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Admission:
    """At most `limit` requests at work, up to `queue` more waiting in FIFO order. Thread-safe.

    Slots are released by worker threads once the engine has really stopped (not when a client
    goes away), so `running` never undercounts the work in progress; waiters are woken on their
    own event loop.
    """

    def __init__(self, limit: int, queue: int) -> None:
        if limit < 1 or queue < 0:
            raise ValueError(f"max_concurrent must be >= 1 and max_queue >= 0 (got {limit}, {queue})")
        self.limit = limit
        self.queue = queue
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: deque[_Ticket] = deque()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, timeout: float) -> None:
        """Take a slot, waiting at most `timeout` s; `QueueFullError` or `DeadlineExceededError` otherwise."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._running < self.limit and not self._waiting:
                self._running += 1
                return
            if len(self._waiting) >= self.queue:
                raise QueueFullError
            ticket = _Ticket(loop, loop.create_future())
            self._waiting.append(ticket)
        try:
            await asyncio.wait_for(asyncio.shield(ticket.future), max(timeout, 0.0))
        except BaseException as exc:
            with self._lock:
                if ticket.granted:  # the slot arrived just as we gave up: hand it on
                    self._release_locked()
                else:
                    self._waiting.remove(ticket)
            if isinstance(exc, TimeoutError):
                raise DeadlineExceededError from None
            raise

    def release(self) -> None:
        with self._lock:
            self._release_locked()

    def _release_locked(self) -> None:
        while self._waiting:
            ticket = self._waiting.popleft()
            try:
                ticket.loop.call_soon_threadsafe(_grant, ticket.future)
            except RuntimeError:  # its event loop is closed: that waiter is gone
                continue
            ticket.granted = True
            return
        self._running -= 1


# Jobs --------------------------------------------------------------------------------------------


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_OPENED = _Marker("OPENED")  # the backend accepted the prompt (prefill done): a stream may start


@dataclass(frozen=True)
class _Failure:
    error: BaseException


@dataclass(eq=False)
class _Job:
    """One admitted request as the worker and the handler share it."""

    request_id: str
    run_id: uuid.UUID
    request: ChatRequest
    deadline: float  # time.monotonic()
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody will read this answer
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


class _OpenNotifier:
    """The backend, telling the job when `open` succeeded (a stream's headers wait for that)."""

    def __init__(self, inner: Backend, on_open: Callable[[], None]) -> None:
        self.inner = inner
        self._on_open = on_open

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def open(self, messages: Sequence[ChatMessage], **params: Any) -> Generation:
        generation = self.inner.open(messages, **params)
        self._on_open()
        return generation


class ChatService:
    """The state behind one app: admission, worker threads, statistics and counters."""

    def __init__(
        self,
        backend: Backend,
        reward: RewardModel,
        config: STARSConfig,
        stats: RejectionStats,
        *,
        max_concurrent: int,
        max_queue: int,
        request_timeout_s: float,
    ) -> None:
        if request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0 (got {request_timeout_s})")
        self.backend = backend
        self.reward = reward
        self.config = config
        self.stats = stats
        self.request_timeout_s = request_timeout_s
        self.admission = Admission(max_concurrent, max_queue)
        self.model_name = backend.model_name
        self.started = time.time()
        self.counts: Counter[str] = Counter()  # completed, failed, invalid, cancelled, queue_full, queue_timeout
        self.on_count: Callable[[str], None] | None = None  # e.g. a Prometheus counter per name
        self._lock = threading.Lock()
        self._jobs: set[_Job] = set()
        self._executor: ThreadPoolExecutor | None = None

    # Counters ---------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests whose engine is running (a cancelled one counts until its worker has stopped)."""
        return self.admission.running

    @property
    def queued(self) -> int:
        return self.admission.waiting

    @property
    def cancelled(self) -> int:
        return self.counts["cancelled"]

    def count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1
        if self.on_count is not None:
            with contextlib.suppress(Exception):  # metrics must never fail a request
                self.on_count(name)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.model_name,
            "reward": getattr(self.reward, "name", None),
            "in_flight": self.in_flight,
            "queued": self.queued,
            "cancelled": self.cancelled,
            "completed": self.counts["completed"],
            "failed": self.counts["failed"],
            "invalid": self.counts[INVALID_OUTCOME],
            "rejected": self.counts["queue_full"] + self.counts["queue_timeout"],
            "max_concurrent": self.admission.limit,
            "max_queue": self.admission.queue,
            "uptime_s": round(time.time() - self.started, 3),
            "lockstep": self._lockstep(),
        }

    def _lockstep(self) -> dict[str, Any] | None:
        """How concurrent requests shared drafting rounds; None when the backend does not batch them."""
        stats = getattr(self.backend, "stats", None)
        if not isinstance(stats, LockstepStats):
            return None
        return {
            "rounds": stats.rounds,
            "mean_requests_per_round": round(stats.mean_round, 3),
            "largest_round": stats.largest_round,
        }

    # Lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.admission.limit, thread_name_prefix="stars-chat")

    def stop(self) -> None:
        """Cancel every job and let the workers wind down (they close their generations)."""
        with self._lock:
            for job in self._jobs:
                job.cancel()
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # Work -------------------------------------------------------------------------------------

    def launch(self, request: ChatRequest, request_id: str, deadline: float) -> _Job:
        """Run an admitted request in a worker thread (the caller holds an admission slot)."""
        job = _Job(request_id, uuid.uuid4(), request, deadline, asyncio.get_running_loop())
        self.start()
        with self._lock:
            self._jobs.add(job)
            executor = self._executor
        try:
            assert executor is not None
            future = executor.submit(self._work, job)
        except RuntimeError:  # shut down meanwhile
            self._abandon(job)
            raise OpenAIError(503, "the server is shutting down", type="server_error", code="shutting_down") from None
        future.add_done_callback(lambda done: self._abandon(job) if done.cancelled() else None)
        return job

    def _abandon(self, job: _Job) -> None:
        """A job whose worker never ran (shutdown): give its slot back and tell its handler."""
        with self._lock:
            self._jobs.discard(job)
        self.admission.release()
        job.put(_Failure(OpenAIError(503, "the server is shutting down", type="server_error", code="shutting_down")))

    def _work(self, job: _Job) -> None:
        try:
            self._run(job)
        except BaseException as exc:  # pragma: no cover - _run reports its own failures
            logger.exception("%s: worker failed", job.request_id)
            job.put(_Failure(exc))
        finally:
            with self._lock:
                self._jobs.discard(job)
            self.admission.release()

    def _run(self, job: _Job) -> None:
        request = job.request
        if job.cancelled.is_set():
            self.count("cancelled")
            return
        remaining = job.deadline - time.monotonic()
        if remaining <= 0:
            self.count("queue_timeout")
            job.put(_Failure(DeadlineExceededError()))
            return
        budget = request.config.time_budget_s
        config = request.config.with_overrides(time_budget_s=max(min(budget or math.inf, remaining), 1e-3))
        engine = STARSEngine(_OpenNotifier(self.backend, lambda: job.put(_OPENED)), self.reward, config)
        run_id = job.run_id
        self.stats.start(
            RunInfo(run_id, self.model_name, temperature=config.temperature, max_tokens=config.max_new_tokens)
        )
        decisions: list[dict[str, Any]] = []
        first_text = True
        finished = False
        events = engine.stream(request.turns, stop=request.stop)
        try:
            for event in events:
                if isinstance(event, CandidateJudged):
                    payload = segment_payload(event)
                    decisions.append(payload)
                    self.stats.decisions(run_id, [payload])
                elif isinstance(event, TextEmitted):
                    if first_text:
                        first_text = False
                        self.stats.first_chunk(run_id)
                elif isinstance(event, Finished):
                    finished = True
                    result = event.result
                    self.stats.finish(
                        run_id, result.model_name, result.finish_reason, result.stats.as_dict(), decisions
                    )
                    self.count("completed")
                job.put(event)
                if job.cancelled.is_set() and not finished:
                    break
        except Exception as exc:
            if error_for(exc).status < 500:
                # The client's mistake (e.g. a prompt too long for the context window): answered with a
                # 4xx, counted apart so it never feeds the error rate or `failed`.
                self.stats.finish(run_id, self.model_name, INVALID_OUTCOME, {}, decisions)
                self.count(INVALID_OUTCOME)
            else:
                self.stats.fail(run_id, exc)
                self.count("failed")
                if isinstance(exc, RewardError | BackendError):
                    logger.warning("%s: %s: %s", job.request_id, type(exc).__name__, exc)
                else:
                    logger.exception("%s: the engine failed", job.request_id)
            job.put(_Failure(exc))
            return
        finally:
            events.close()  # on cancel: the engine's `finally` closes the backend generation
        if not finished:
            self.stats.finish(run_id, self.model_name, "cancelled", {}, decisions)
            self.count("cancelled")


# Responses ---------------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def stars_extension(result: STARSResult, seed: int | None) -> dict[str, Any]:
    """The `stars` block: per-response statistics, the engine's finish reason and the seed used."""
    stats = {key: _finite(value) for key, value in result.stats.as_dict().items()}
    return {**stats, "finish_reason": result.finish_reason, "seed": seed}


def usage(result: STARSResult) -> dict[str, int]:
    prompt, completion = result.stats.prompt_tokens, result.stats.tokens_emitted
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(request_id: str, created: int, model: str, result: STARSResult, seed: int | None) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": FINISH_REASONS.get(result.finish_reason, "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage(result),
        "system_fingerprint": None,
        "stars": stars_extension(result, seed),
    }


def _sse(data: Mapping[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"data: {text}\n\n".encode()


class _Chunks:
    """`chat.completion.chunk` objects of one stream."""

    def __init__(self, request_id: str, created: int, model: str) -> None:
        self.base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def delta(self, delta: Mapping[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": dict(delta), "finish_reason": finish_reason, "logprobs": None}
        return _sse({**self.base, "system_fingerprint": None, "choices": [choice], **extra})


class _EventStream(Response):
    """A server-sent event stream that notices a client disconnect while waiting for the engine.

    Starlette's `StreamingResponse` only notices a vanished client when the next send fails (ASGI
    2.4 servers), which can be a whole segment later; here a listener runs beside the stream.
    """

    media_type = "text/event-stream"

    def __init__(
        self, body: AsyncIterator[bytes], on_disconnect: Callable[[], None], headers: Mapping[str, str]
    ) -> None:
        self.body_iterator = body
        self.on_disconnect = on_disconnect
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self._stream(send))
        listen = asyncio.ensure_future(self._listen(receive))
        try:
            await asyncio.wait({stream, listen}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone = listen.done() and not listen.cancelled() and not stream.done()
            for task in (stream, listen):
                task.cancel()
            results = await asyncio.gather(stream, listen, return_exceptions=True)
            if gone or isinstance(results[0], OSError):
                self.on_disconnect()
            elif isinstance(results[0], Exception):
                logger.error("event stream failed: %r", results[0])

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _listen(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


# HTTP plumbing -----------------------------------------------------------------------------------


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(awaitable: Awaitable[T], watcher: asyncio.Future[None]) -> T:
    """Await `awaitable`, or raise `_ClientGone` (cancelling it) when the watcher sees a disconnect."""
    task = asyncio.ensure_future(awaitable)
    await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise _ClientGone


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    too_large = OpenAIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise OpenAIError(400, "the request body is empty: send a JSON object")
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise OpenAIError(400, f"could not parse the JSON body of the request: {exc}", code="invalid_json") from None
    except RecursionError:  # nesting deeper than the parser's limit: still the client's mistake
        raise OpenAIError(400, "the JSON body of the request is nested too deeply", code="invalid_json") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _BearerAuth:
    """Requires `Authorization: Bearer <key>` on every path except the open ones (ASGI middleware)."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Sequence[str]) -> None:
        self.app = app
        self.key = api_key.encode()
        self.open_paths = tuple(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_open(scope["path"]) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        error = OpenAIError(
            401,
            "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await error.response()(scope, receive, send)

    def _is_open(self, path: str) -> bool:
        return any(path == open_path or path.startswith(open_path.rstrip("/") + "/") for open_path in self.open_paths)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False


def _server_metrics(exporter: PrometheusExporter, service: ChatService) -> None:
    """Queue gauges and a counter of turned-away requests, on the exporter's registry."""
    import prometheus_client

    on = {"registry": exporter.registry}
    prometheus_client.Gauge("stars_server_in_flight", "Chat requests whose engine is running.", **on).set_function(
        lambda: service.in_flight
    )
    prometheus_client.Gauge("stars_server_queued", "Chat requests waiting for a worker.", **on).set_function(
        lambda: service.queued
    )
    rejected = prometheus_client.Counter(
        "stars_server_rejected_total",
        "Chat requests turned away: queue_full (429), queue_timeout (503), cancelled (client left).",
        ["reason"],
        **on,
    )
    reasons = ("queue_full", "queue_timeout", "cancelled")
    for reason in reasons:
        rejected.labels(reason=reason)

    def on_count(name: str) -> None:
        if name in reasons:
            rejected.labels(reason=name).inc()

    service.on_count = on_count


# The app -----------------------------------------------------------------------------------------


def create_app(
    backend: Backend,
    reward: RewardModel,
    config: STARSConfig | None = None,
    *,
    api_key: str | None = None,
    max_concurrent: int = 8,
    max_queue: int = 32,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    observers: Iterable[StatsObserver] = (),
    extra_routes: Iterable[BaseRoute] = (),
    override_policy: OverridePolicy | None = None,
    open_paths: Sequence[str] = OPEN_PATHS,
    retry_after_s: int = DEFAULT_RETRY_AFTER_S,
) -> Starlette:
    """The ASGI app serving STARS over the OpenAI chat API (see the module docstring).

    `api_key` guards every path except `open_paths` (default `/health`); `observers` receive the
    same statistics as `/metrics`; `extra_routes` (e.g. a dashboard) are mounted beside the API.
    `override_policy` says which config fields a request may change (default `OverridePolicy()`:
    only lowering `max_new_tokens` / `time_budget_s`, and `seed`), so clients cannot weaken the guard.
    `app.state` exposes `service` (counters, admission), `stats` (`RejectionStats`),
    `exporter` (`PrometheusExporter`), `config` and `override_policy`.
    """
    config = config or STARSConfig()
    policy = override_policy if override_policy is not None else DEFAULT_POLICY
    exporter = PrometheusExporter()
    stats = RejectionStats(observers=[exporter, *observers])
    timed_backend, timed_reward = exporter.instrument(backend, reward)
    service = ChatService(
        timed_backend,
        timed_reward,
        config,
        stats,
        max_concurrent=max_concurrent,
        max_queue=max_queue,
        request_timeout_s=request_timeout_s,
    )
    _server_metrics(exporter, service)

    def finish_log(
        request_id: str, status: int, started: float, result: STARSResult | None = None, stream: bool = False
    ) -> None:
        tokens = (
            f" prompt_tokens={result.stats.prompt_tokens} completion_tokens={result.stats.tokens_emitted}"
            if result
            else ""
        )
        finish = f" finish={result.finish_reason}" if result else ""
        logger.info(
            "%s status=%d stream=%s%s%s latency=%.3fs",
            request_id,
            status,
            stream,
            tokens,
            finish,
            time.monotonic() - started,
        )

    async def chat_completions(request: Request) -> Response:
        started = time.monotonic()
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        try:
            body = await _read_json(request, max_body_bytes)
            chat = parse_chat_request(body, config, policy=policy)
        except OpenAIError as exc:
            finish_log(request_id, exc.status, started)
            return exc.response(request_id)
        deadline = started + request_timeout_s
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        job: _Job | None = None
        handed_over = False
        try:
            try:
                await _unless_gone(service.admission.acquire(deadline - time.monotonic()), watcher)
            except QueueFullError:
                service.count("queue_full")
                raise OpenAIError(
                    429,
                    f"too many requests: {service.admission.limit} running and {service.admission.queue} waiting; "
                    "retry later",
                    type="rate_limit_exceeded",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(retry_after_s)},
                ) from None
            except DeadlineExceededError:
                service.count("queue_timeout")
                error = error_for(DeadlineExceededError())
                error.headers["Retry-After"] = str(retry_after_s)
                raise error from None
            job = service.launch(chat, request_id, deadline)
            model = chat.model or service.model_name
            created = int(time.time())
            if chat.stream:
                item = await _unless_gone(job.queue.get(), watcher)
                if isinstance(item, _Failure):
                    raise error_for(item.error)
                watcher.cancel()  # the stream listens for the disconnect from here on
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                handed_over = True
                return _EventStream(
                    _stream_events(job, _Chunks(request_id, created, model), started, finish_log),
                    on_disconnect=job.cancel,
                    headers={"x-request-id": request_id},
                )
            while True:
                item = await _unless_gone(job.queue.get(), watcher)
                if isinstance(item, _Failure):
                    raise error_for(item.error)
                if isinstance(item, Finished):
                    result = item.result
                    finish_log(request_id, 200, started, result)
                    return JSONResponse(
                        completion_body(request_id, created, model, result, chat.config.seed),
                        headers={"x-request-id": request_id},
                    )
        except OpenAIError as exc:
            if job is not None:
                job.cancel()
            finish_log(request_id, exc.status, started)
            return exc.response(request_id)
        except _ClientGone:
            if job is None:
                service.count("cancelled")  # left while queued: nothing ran
            else:
                job.cancel()  # the worker stops at its next event and counts it
            finish_log(request_id, 499, started)
            return Response(status_code=499)
        finally:
            if not handed_over:
                watcher.cancel()
                if job is not None:
                    job.cancel()  # no-op once finished; stops the worker on any other way out

    async def _stream_events(
        job: _Job, chunks: _Chunks, started: float, log: Callable[..., None]
    ) -> AsyncIterator[bytes]:
        status, result = 200, None
        try:
            yield chunks.delta({"role": "assistant", "content": ""})
            while True:
                item = await job.queue.get()
                if isinstance(item, TextEmitted):
                    yield chunks.delta({"content": item.text})
                elif isinstance(item, Finished):
                    result = item.result
                    yield chunks.delta(
                        {},
                        FINISH_REASONS.get(result.finish_reason, "stop"),
                        usage=usage(result),
                        stars=stars_extension(result, job.request.config.seed),
                    )
                    break
                elif isinstance(item, _Failure):
                    error = error_for(item.error)
                    status = error.status
                    yield _sse(error.body())
                    break
            yield _sse("[DONE]")
        finally:
            if result is None and status == 200:
                status = 499
            job.cancel()  # no-op once finished; otherwise the client left mid-stream
            log(job.request_id, status, started, result, True)

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model_card(service)]})

    async def model(request: Request) -> Response:
        if request.path_params["model"] != service.model_name:
            return OpenAIError(
                404, f"the model {request.path_params['model']!r} does not exist", param="model", code="model_not_found"
            ).response()
        return JSONResponse(_model_card(service))

    async def health(_: Request) -> Response:
        return JSONResponse(service.health())

    async def metrics(_: Request) -> Response:
        return Response(exporter.render(), headers={"Content-Type": exporter.content_type})

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return OpenAIError(exc.status_code, str(exc.detail), type=error_type, code=None, headers=exc.headers).response()

    async def internal_error(_: Request, exc: Exception) -> Response:
        logger.error("unhandled error: %r", exc)
        return error_for(exc).response()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    middleware = [Middleware(_BearerAuth, api_key=api_key, open_paths=open_paths)] if api_key else []
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *extra_routes,
        ],
        middleware=middleware,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.stats = stats
    app.state.exporter = exporter
    app.state.config = config
    app.state.override_policy = policy
    return app


def _model_card(service: ChatService) -> dict[str, Any]:
    return {"id": service.model_name, "object": "model", "created": int(service.started), "owned_by": "stars-guard"}


def serve(
    backend: Backend,
    reward: RewardModel,
    config: STARSConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_concurrent: int = 8,
    max_queue: int = 32,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    observers: Iterable[StatsObserver] = (),
    extra_routes: Iterable[BaseRoute] = (),
    override_policy: OverridePolicy | None = None,
    log_level: str = "info",
    announce: Sequence[str] = (),
    dashboard: bool = True,
) -> None:
    """Run the chat service on uvicorn until interrupted (binds 127.0.0.1 unless told otherwise).

    With `dashboard`, the live dashboard (`stars_guard.serving.dashboard`) is mounted at `/dashboard`;
    `override_policy` is `create_app`'s.
    """
    import uvicorn

    observers, extra_routes = list(observers), list(extra_routes)
    if dashboard:
        from stars_guard.serving.dashboard import DashboardRecorder, dashboard_routes

        recorder = DashboardRecorder()
        observers.append(recorder)
        extra_routes.extend(dashboard_routes(None, recorder))  # reads app.state.stats, built by create_app
    app = create_app(
        backend,
        reward,
        config,
        api_key=api_key,
        max_concurrent=max_concurrent,
        max_queue=max_queue,
        request_timeout_s=request_timeout_s,
        max_body_bytes=max_body_bytes,
        observers=observers,
        extra_routes=extra_routes,
        override_policy=override_policy,
    )
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
