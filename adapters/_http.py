"""The HTTP client every remote adapter shares: timeouts, retries, and errors that carry the server's words.

One policy for every serving engine and reward service, so a safety layer behaves the same whichever
server misbehaves:

- connect and read timeouts on every request (a stalled server can never hang a request);
- retries with exponential backoff and jitter on connection failures (refused, reset, a server that
  died mid-response), on 5xx, and on 429, where the server's `Retry-After` is honoured (on 503 too);
- no retry on any other 4xx: the request itself is wrong, so the server's message is surfaced at once;
- after the last attempt, a typed error (`BackendError` for generation, `RewardError` for rewards)
  whose message names the URL, the status and what the server said;
- a request's deadline (`stars_guard.deadline`) bounds the whole call: each attempt's timeouts are
  capped at the time left, the answer's body is read only until the deadline, no attempt starts and
  no backoff sleeps past it, and a call the deadline ended raises the typed error, marked as a
  `DeadlineExceeded`.

This module is an I/O edge: it imports httpx at module level. The core (`stars_guard.engine` and
friends) never imports it.
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from stars_guard.deadline import current_deadline, deadline_error
from stars_guard.errors import StarsGuardError

_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_MESSAGE_LIMIT = 500  # characters of a server's error body quoted in an exception


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving up. Delays grow as base * 2**attempt, capped, minus random jitter."""

    max_retries: int = 3
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0
    jitter: float = 0.5  # each delay is drawn from [(1 - jitter) * d, d]
    max_retry_after_s: float = 30.0  # a 429 asking for a longer wait fails at once instead of stalling
    retry_read_timeouts: bool = False  # a server too slow once is usually too slow again

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 (got {self.max_retries})")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff delays must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1] (got {self.jitter})")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number `attempt` (0-based)."""
        delay = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        return delay * (1.0 - self.jitter * rng.random())


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for a connection and for each read; `None` read waits forever (not advised)."""

    connect_s: float = 5.0
    read_s: float | None = 60.0

    def as_httpx(self, cap: float | None = None) -> httpx.Timeout:
        """The httpx timeouts, each at most `cap` seconds when given (the time left to a deadline)."""
        connect, read = self.connect_s, self.read_s
        if cap is not None:
            cap = max(cap, 0.0)
            connect, read = min(connect, cap), cap if read is None else min(read, cap)
        return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)


@dataclass
class HTTPResult:
    """A decoded response body and how many retries it took."""

    data: Any
    status_code: int
    retries: int
    headers: Mapping[str, str] = field(default_factory=dict)


class HTTPClient:
    """A JSON client for one service (base URL), thread-safe, with the policy in the module docstring.

    `error_type` is the typed error raised after the retries (BackendError or RewardError);
    `service` names the service in messages ("TGI", "reward service").
    """

    def __init__(
        self,
        base_url: str,
        *,
        error_type: type[StarsGuardError],
        service: str,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.error_type = error_type
        self.service = service
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        merged = {"Accept": "application/json", **(headers or {})}
        if api_key:
            merged["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(base_url=self.base_url, timeout=self.timeouts.as_httpx(), headers=merged)
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.total_retries = 0  # over the client's life, all threads

    def post(self, path: str, payload: Any, *, retry: bool = True) -> HTTPResult:
        """POST `payload` as JSON and decode the JSON answer (see the class docstring for failures)."""
        return self.request("POST", path, payload, retry=retry)

    def get(self, path: str, *, retry: bool = True) -> HTTPResult:
        return self.request("GET", path, None, retry=retry)

    def request(self, method: str, path: str, payload: Any = None, *, retry: bool = True) -> HTTPResult:
        """One call with the module's policy; bounded by the caller's deadline (`stars_guard.deadline`), if any."""
        url = f"{self.base_url}{path}"
        deadline = current_deadline()
        attempts = 1 + (self.retry.max_retries if retry else 0)
        last_problem = "no attempt made"
        last_response: httpx.Response | None = None  # the last HTTP answer, if the last failure was one
        for attempt in range(attempts):
            delay: float | None = None
            last_response = None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                when = "before the call" if attempt == 0 else f"after {_attempts(attempt)} (last: {last_problem})"
                raise self._spent(url, when, attempt)
            try:
                response = self._send(method, path, payload, deadline, left)
            except _BodyPastDeadline:
                raise self._spent(url, "while its answer was still arriving", attempt) from None
            except httpx.TimeoutException as exc:
                kind = "connect" if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout) else "read"
                limit = self.timeouts.connect_s if kind == "connect" else self.timeouts.read_s
                if left is not None and (limit is None or left < limit):  # the deadline's cap is what fired
                    waiting = "to connect" if kind == "connect" else "for an answer"
                    raise self._spent(url, f"waiting {left:.2f}s {waiting}", attempt) from exc
                last_problem = f"{kind} timeout after {limit}s"
                if kind == "read" and not self.retry.retry_read_timeouts:
                    raise self._error(f"{self.service} at {url} timed out ({last_problem})", None, attempt) from exc
            except httpx.TransportError as exc:  # refused, reset, server died mid-response
                last_problem = f"connection failed: {type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return HTTPResult(
                        self._decode(response, url, attempt), response.status_code, attempt, response.headers
                    )
                last_problem = f"HTTP {response.status_code}: {server_message(response)}"
                last_response = response
                if response.status_code not in _RETRYABLE_STATUS:
                    raise self._error(
                        f"{self.service} at {url} rejected the request ({last_problem})", response, attempt
                    )
                if response.status_code in (429, 503):  # both may say when to come back
                    delay = retry_after_seconds(response.headers.get("Retry-After"))
                    if delay is not None and delay > self.retry.max_retry_after_s:
                        raise self._error(
                            f"{self.service} at {url} answered {last_problem} and asks to retry after "
                            f"{delay:.0f}s, more than max_retry_after_s={self.retry.max_retry_after_s:.0f}s",
                            response,
                            attempt,
                        )
            if attempt + 1 >= attempts:
                break
            if delay is None:
                with self._rng_lock:
                    delay = self.retry.backoff(attempt, self._rng)
            if deadline is not None and time.monotonic() + delay >= deadline:
                when = (
                    f"after {_attempts(attempt + 1)} (last: {last_problem}); a retry in {delay:.2f}s would end past it"
                )
                raise self._spent(url, when, attempt)
            self._count_retry()
            self._sleep(delay)
        raise self._error(
            f"{self.service} at {url} failed after {_attempts(attempts)} ({last_problem})",
            last_response,
            attempts - 1,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HTTPClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # Internals ------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, payload: Any, deadline: float | None, left: float | None) -> httpx.Response:
        """One attempt. Under a deadline a read timeout bounds each wait for bytes, not the whole body,
        so the body is read chunk by chunk and abandoned once the deadline passes."""
        if deadline is None:
            return self._client.request(method, path, json=payload)
        with self._client.stream(method, path, json=payload, timeout=self.timeouts.as_httpx(cap=left)) as streamed:
            declared = streamed.headers.get("Content-Length")
            raw = bytearray()
            for chunk in streamed.iter_raw():
                raw += chunk
                complete = declared is not None and declared.isdigit() and len(raw) >= int(declared)
                if not complete and time.monotonic() >= deadline:
                    raise _BodyPastDeadline
        # A plain response over the raw bytes: it decodes any Content-Encoding once, as a normal read would.
        kept = ("http_version", "reason_phrase")
        extensions = {key: streamed.extensions[key] for key in kept if key in streamed.extensions}
        return httpx.Response(
            streamed.status_code,
            headers=streamed.headers,
            content=bytes(raw),
            request=streamed.request,
            extensions=extensions,
        )

    def _spent(self, url: str, when: str, retries: int) -> StarsGuardError:
        """The typed error for a call its deadline ended (also a `DeadlineExceeded`; no status code)."""
        message = f"{self.service} at {url}: the request's deadline (time budget) was spent {when}"
        return self._error(message, None, retries, deadline=True)

    def _count_retry(self) -> None:
        with self._rng_lock:
            self.total_retries += 1

    def _decode(self, response: httpx.Response, url: str, retries: int) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            snippet = response.text[:200]
            raise self._error(
                f"{self.service} at {url} answered HTTP {response.status_code} with malformed JSON: {snippet!r}",
                response,
                retries,
            ) from exc

    def _error(
        self, message: str, response: httpx.Response | None, retries: int, *, deadline: bool = False
    ) -> StarsGuardError:
        error = deadline_error(self.error_type, message) if deadline else self.error_type(message)
        # Structured details for callers that branch on them (the message stays the human interface).
        error.status_code = None if response is None else response.status_code  # type: ignore[attr-defined]
        error.retries = retries  # type: ignore[attr-defined]
        return error


def _attempts(count: int) -> str:
    return f"{count} attempt{'s' if count != 1 else ''}"


class _BodyPastDeadline(Exception):
    """The deadline passed while an answer's body was still arriving (internal to `HTTPClient`)."""


def server_message(response: httpx.Response) -> str:
    """What the server said about an error, from the body shapes the supported servers use.

    TGI/TEI: {"error": str, "error_type": str}; vLLM/OpenAI: {"error": {"message": ...}} or
    {"message": ...}; FastAPI/llama.cpp server: {"detail": str | [{"loc", "msg"}]}.
    """
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        text = response.text.strip()
        return text[:_MESSAGE_LIMIT] if text else response.reason_phrase or "(empty body)"
    return _message_of(body)[:_MESSAGE_LIMIT]


def _message_of(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if isinstance(error, str):
            kind = body.get("error_type")
            return f"{error} ({kind})" if kind else error
        if "message" in body:
            return str(body["message"])
        detail = body.get("detail")
        if isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    location = ".".join(str(part) for part in item.get("loc", ()))
                    parts.append(f"{location}: {item.get('msg', item)}" if location else str(item.get("msg", item)))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
        if detail is not None:
            return str(detail)
    return json.dumps(body)


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
