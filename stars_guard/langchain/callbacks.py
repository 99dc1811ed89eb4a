"""Every STARS decision as LangChain callback data, and `RejectionStatsHandler` to aggregate it.

Two ways decisions reach handlers (docs/langchain.md):
- a `stars_segment` custom event per judged candidate, dispatched under the chat model's own run
  id wherever LangChain hands the model a run manager (invoke, ainvoke, batch, abatch, and
  `stream_events(version="v3")`);
- `stream()`, `astream()` and streaming invokes give the model no run manager, so the same
  decisions (never with text) ride on each chunk as `STARSGenerationChunk.stars_segments`, which
  handlers see in `on_llm_new_token(..., chunk=...)`.
The final message lists them all in `response_metadata["stars_segments"]` when the model was
asked to (`include_segments=True`); the handler does not need it.

`RejectionStatsHandler` takes decisions from whichever source arrives and reconciles each run
against the final message, so nothing is counted twice or lost. Custom events are best effort:
a failing handler never fails the call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

try:
    from langchain_core.callbacks import (
        AsyncCallbackManager,
        AsyncCallbackManagerForLLMRun,
        BaseCallbackHandler,
        CallbackManager,
        CallbackManagerForLLMRun,
    )
    from langchain_core.outputs import LLMResult
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "stars_guard.langchain.callbacks needs langchain-core: pip install 'stars-guard[langchain]'"
    ) from exc

from stars_guard.telemetry.aggregator import RejectionStats, RunInfo, StatsObserver

logger = logging.getLogger(__name__)

STARS_SEGMENT_EVENT = "stars_segment"
LLM_TYPE = "stars-guard"  # `_type` in the invocation params of STARSChatModel runs


def _managers_for(run_manager: Any, manager_class: type[Any]) -> list[Any]:
    """Callback managers whose parent is the chat model's run (events then carry its run id), one
    per handler: LangChain stops at the first handler that raises (`raise_error=True`), and a
    broken handler must not starve the others of decisions (the message no longer lists them all)."""
    if run_manager is None or not run_manager.handlers:
        return []
    return [
        manager_class(
            handlers=[handler],
            inheritable_handlers=[handler] if handler in run_manager.inheritable_handlers else [],
            parent_run_id=run_manager.run_id,
            tags=run_manager.tags,
            inheritable_tags=run_manager.inheritable_tags,
            metadata=run_manager.metadata,
            inheritable_metadata=run_manager.inheritable_metadata,
        )
        for handler in run_manager.handlers
    ]


class _Warner:
    def __init__(self) -> None:
        self._warned = False

    def __call__(self, exc: Exception) -> None:
        if not self._warned:  # once per request: a broken handler would otherwise flood the log
            self._warned = True
            logger.warning("a callback handler failed on a %s event (ignored): %r", STARS_SEGMENT_EVENT, exc)


class SegmentEventDispatcher:
    """Sends `stars_segment` events under the chat model's run. Never raises."""

    def __init__(self, run_manager: CallbackManagerForLLMRun | None) -> None:
        self._managers = _managers_for(run_manager, CallbackManager)
        self._run_id = run_manager.run_id if run_manager is not None else None
        self._warn = _Warner()

    def __call__(self, payload: Mapping[str, Any]) -> None:
        for manager in self._managers:
            try:
                manager.on_custom_event(STARS_SEGMENT_EVENT, dict(payload), run_id=self._run_id)
            except Exception as exc:  # a handler with raise_error=True failed: the answer goes on
                self._warn(exc)


class AsyncSegmentEventDispatcher:
    """The async twin: async handlers are awaited on the event loop. Never raises."""

    def __init__(self, run_manager: AsyncCallbackManagerForLLMRun | None) -> None:
        self._managers = _managers_for(run_manager, AsyncCallbackManager)
        self._run_id = run_manager.run_id if run_manager is not None else None
        self._warn = _Warner()

    async def __call__(self, payload: Mapping[str, Any]) -> None:
        for manager in self._managers:
            try:
                await manager.on_custom_event(STARS_SEGMENT_EVENT, dict(payload), run_id=self._run_id)
            except Exception as exc:
                self._warn(exc)


# Aggregation (pure) ------------------------------------------------------------------------------


class RejectionStatsHandler(BaseCallbackHandler):
    """Aggregates STARS rejection statistics across runs; attach it like any callback handler.

    `llm.invoke(x, config={"callbacks": [handler]})`, or `STARSChatModel(callbacks=[handler])`.
    Only STARSChatModel runs are counted. Safe across threads and concurrent async calls.
    `observers` (e.g. `telemetry.PrometheusExporter()`, `telemetry.OpenTelemetryExporter()`)
    receive every request, decision and settled segment as it is aggregated.
    """

    run_inline = True  # cheap and lock-protected: no thread hop per event on the async path
    raise_error = False

    def __init__(self, observers: Iterable[StatsObserver] = (), *, window: int = 4096, recent: int = 64) -> None:
        super().__init__()
        self.stats = RejectionStats(observers, window=window, recent=recent)

    def snapshot(self) -> dict[str, Any]:
        """Totals, rates, distributions, per-segment profile and recent requests (JSON-safe)."""
        return self.stats.snapshot()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        params = invocation_params or {}
        if params.get("_type") != LLM_TYPE:
            return
        max_tokens = params.get("max_tokens")
        temperature = params.get("temperature")
        self.stats.start(
            RunInfo(
                run_id=run_id,
                model_name=str(params.get("model") or "unknown"),
                temperature=float(temperature) if isinstance(temperature, int | float) else None,
                max_tokens=int(max_tokens) if isinstance(max_tokens, int) else None,
            )
        )

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == STARS_SEGMENT_EVENT and isinstance(data, Mapping):
            self.stats.decisions(run_id, [data])

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        if not self.stats.is_tracked(run_id):
            return
        if token:
            self.stats.first_chunk(run_id)
        decisions = getattr(chunk, "stars_segments", None)
        if decisions:
            self.stats.decisions(run_id, decisions)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        message = _message_of(response)
        metadata = getattr(message, "response_metadata", None) or {}
        stats = metadata.get("stars")
        if not isinstance(stats, Mapping):
            return  # not a STARS answer
        self.stats.finish(
            run_id,
            model_name=str(metadata.get("model_name") or "unknown"),
            # the engine's own word, as the chat service reports it (`finish_reason` is OpenAI's)
            finish_reason=str(metadata.get("stars_finish_reason") or metadata.get("finish_reason") or "unknown"),
            stats=stats,
            decisions=list(metadata.get("stars_segments") or []),
        )

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.stats.fail(run_id, error)


def _message_of(response: LLMResult) -> Any:
    for generations in response.generations:
        for generation in generations:
            message = getattr(generation, "message", None)
            if message is not None:
                return message
    return None
