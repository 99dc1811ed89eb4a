"""`STARSChatModel`: the STARS engine as a LangChain chat model.

Thin by design: it converts LangChain messages to the engine's `ChatMessage`, maps the standard
LangChain parameters onto `STARSConfig`, and turns engine events into chunks and callback events.
Every decision is the engine's; this module adds none.

Streaming contract (docs/langchain.md): one `AIMessageChunk` per accepted segment as the engine
releases it, then a final empty chunk (`chunk_position="last"`) carrying `usage_metadata`,
`finish_reason`, the seed and the complete `stars` statistics. `model_name` rides on the first
chunk only. LangChain's chunk merge concatenates strings and keeps equal ints instead of adding
them, so nothing that merges badly is split across chunks, and the merged stream equals `invoke`.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from contextlib import aclosing, closing
from dataclasses import dataclass
from typing import Any

try:
    from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
    from langchain_core.language_models import BaseChatModel
    from langchain_core.language_models.base import LangSmithParams
    from langchain_core.messages import (
        AIMessage,
        AIMessageChunk,
        BaseMessage,
        HumanMessage,
        SystemMessage,
    )
    from langchain_core.messages import (
        ChatMessage as LCChatMessage,
    )
    from langchain_core.messages.ai import UsageMetadata
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("STARSChatModel needs langchain-core: pip install 'stars-guard[langchain]'") from exc
from pydantic import ConfigDict, Field, model_validator

from stars_guard.config import STARSConfig
from stars_guard.engine import STARSEngine
from stars_guard.errors import InvalidMessagesError
from stars_guard.events import CandidateJudged, Event, STARSResult, TextEmitted
from stars_guard.langchain.callbacks import AsyncSegmentEventDispatcher, SegmentEventDispatcher
from stars_guard.langchain.threads import iterate_in_thread
from stars_guard.messages import ROLE_ALIASES, ChatMessage, normalize_messages
from stars_guard.overrides import OverridePolicy
from stars_guard.protocols import Backend, RewardModel
from stars_guard.telemetry.aggregator import segment_payload

logger = logging.getLogger(__name__)

PROVIDER = "stars_guard"
LLM_TYPE = "stars-guard"
# LangChain names of STARSConfig fields; any other STARSConfig field may be passed by its own name.
_LANGCHAIN_TO_CONFIG = {"max_tokens": "max_new_tokens", "timeout": "time_budget_s"}
_CONFIG_FIELDS = frozenset(STARSConfig.model_fields)
# Call kwargs LangChain itself may pass through to `_generate`/`_stream`.
_LANGCHAIN_CONTROL_KWARGS = frozenset({"stream"})
_SEED_LIMIT = 2**31

# The embedded default models: loaded on first use, once per process, shared by every instance.
_DEFAULTS: dict[str, Any] = {}
_DEFAULTS_LOCK = threading.Lock()


def default_backend() -> Backend:
    """The embedded default backend (local SmolLM2-135M-Instruct), shared per process."""
    with _DEFAULTS_LOCK:
        if "backend" not in _DEFAULTS:
            from stars_guard.adapters.transformers_backend import TransformersBackend

            _DEFAULTS["backend"] = TransformersBackend()
        return _DEFAULTS["backend"]


def default_reward() -> RewardModel:
    """The embedded default reward (offline `GuardReward`), shared per process."""
    with _DEFAULTS_LOCK:
        if "reward" not in _DEFAULTS:
            from stars_guard.adapters.guard_reward import GuardReward

            _DEFAULTS["reward"] = GuardReward()
        return _DEFAULTS["reward"]


def _default_model_name() -> str:
    from stars_guard.models import DEFAULT_LM_NAME

    return DEFAULT_LM_NAME


# Messages ----------------------------------------------------------------------------------------


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[ChatMessage]:
    """LangChain messages as engine turns; text content only, `name` fields ignored.

    Tool and function messages are refused rather than dropped: this model does not call tools,
    and silently losing a turn would change what the answer responds to.
    """
    turns: list[ChatMessage] = []
    for position, message in enumerate(messages):
        if isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
        elif isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, LCChatMessage) and message.role.lower() in ROLE_ALIASES:
            role = ROLE_ALIASES[message.role.lower()]
        else:
            kind = message.role if isinstance(message, LCChatMessage) else message.type
            raise InvalidMessagesError(
                f"message {position} is a {kind!r} message; STARSChatModel takes system, human and ai "
                "messages only (it does not call tools)"
            )
        turns.append(ChatMessage(role, _text_of(message, position)))  # type: ignore[arg-type]
    return normalize_messages(turns)


# Earlier answers' reasoning is not part of what was said; providers drop it from history too.
_SKIPPED_AI_BLOCKS = frozenset({"reasoning", "thinking", "redacted_thinking"})


def _text_of(message: BaseMessage, position: int) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif isinstance(message, AIMessage) and isinstance(block, Mapping) and block.get("type") in _SKIPPED_AI_BLOCKS:
            continue
        else:
            kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            raise InvalidMessagesError(
                f"message {position} has a {kind!r} content block; only text content is supported"
            )
    return "".join(parts)


# Engine events -> LangChain chunks ---------------------------------------------------------------


class STARSGenerationChunk(ChatGenerationChunk):
    """A streamed chunk that also carries the decisions judged since the previous chunk.

    Handlers see it as `on_llm_new_token(..., chunk=...)`, so per-segment decisions reach them
    live in plain `stream()` too, where LangChain gives the model no run manager for custom
    events. The field never enters the message: chunks merge into plain `ChatGenerationChunk`s.
    """

    stars_segments: list[dict[str, Any]] = Field(default_factory=list)


class _Assembler:
    """Turns one request's engine events into chunks, and into the `invoke` message.

    Pure: no I/O, no callbacks. `invoke` and `stream` share it, which is what keeps a merged
    stream equal to the invoked message. Each metadata key is set on exactly one chunk, because
    LangChain merges chunks in two ways: `+` merges dicts (strings concatenate, lists extend) and
    the v3 event protocol keeps the last value of each key.
    """

    def __init__(self, model_name: str, seed: int) -> None:
        self.model_name = model_name
        self.seed = seed
        self.decisions: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._first = True
        self.result: STARSResult | None = None

    def feed(self, event: Event) -> STARSGenerationChunk | None:
        """The chunk to yield for `event`, if any."""
        if isinstance(event, CandidateJudged):
            decision = segment_payload(event, include_text=False)
            self.decisions.append(decision)
            self._pending.append(decision)
            return None
        if isinstance(event, TextEmitted):
            return self._chunk(AIMessageChunk(content=event.text, response_metadata=self._opening()))
        self.result = event.result
        metadata = {**self._opening(), **self._closing(event.result)}
        return self._chunk(
            AIMessageChunk(
                content="", chunk_position="last", usage_metadata=_usage(event.result), response_metadata=metadata
            )
        )

    def message(self, result: STARSResult) -> AIMessage:
        """The whole answer as `invoke` returns it."""
        metadata = {"model_name": self.model_name, "model_provider": PROVIDER, **self._closing(result)}
        return AIMessage(content=result.text, response_metadata=metadata, usage_metadata=_usage(result))

    def _chunk(self, message: AIMessageChunk) -> STARSGenerationChunk:
        chunk = STARSGenerationChunk(message=message, stars_segments=self._pending)
        self._pending = []
        return chunk

    def _opening(self) -> dict[str, Any]:
        if not self._first:
            return {}
        self._first = False
        return {"model_name": self.model_name, "model_provider": PROVIDER}

    def _closing(self, result: STARSResult) -> dict[str, Any]:
        return {
            "finish_reason": result.finish_reason,
            "seed": self.seed,
            "stars": result.stats.as_dict(),
            "stars_segments": list(self.decisions),
        }


def _usage(result: STARSResult) -> UsageMetadata:
    prompt, emitted = result.stats.prompt_tokens, result.stats.tokens_emitted
    return UsageMetadata(input_tokens=prompt, output_tokens=emitted, total_tokens=prompt + emitted)


# The chat model ----------------------------------------------------------------------------------


@dataclass
class _Call:
    """Everything one request needs, resolved from fields and call kwargs."""

    engine: STARSEngine
    turns: list[ChatMessage]
    stop: list[str] | None
    include_text: bool
    assembler: _Assembler


class STARSChatModel(BaseChatModel):
    """A LangChain chat model whose answers are written by STARS (guarded decoding).

    `STARSChatModel()` uses the embedded default (local SmolLM2-135M-Instruct and the offline
    `GuardReward`, loaded on first use and shared per process). Pass `backend=` / `reward=` for
    any adapter and `config=` for the STARS knobs. Standard LangChain fields map onto the config:
    `max_tokens` -> `max_new_tokens`, `timeout` -> `time_budget_s` (the answer ends when it is
    spent, with `finish_reason="time_budget"`), `temperature` (0 = greedy: one candidate per
    segment, still scored, so the safety floor still applies), `seed` (drawn per call when unset).
    Any `STARSConfig` field, and these names, may also be passed per call: `llm.invoke(x, seed=3)`.
    With `override_policy=OverridePolicy()` those call kwargs follow the service's rule instead
    (only lowering `max_tokens` / `timeout`, and `seed`, unless the policy allows more), for a
    model handed to code that must not weaken the guard (an agent, a plugin, a user's settings).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str | None = Field(
        default=None, description="Name reported as model_name; defaults to the backend's model name."
    )
    temperature: float | None = Field(default=None, description="Sampling temperature; 0 = greedy.")
    max_tokens: int | None = Field(default=None, description="Most tokens in the answer (max_new_tokens).")
    stop: list[str] | None = Field(default=None, description="Strings that end the answer (not emitted).")
    timeout: float | None = Field(default=None, description="Wall-clock budget per request in seconds.")
    max_retries: int = Field(
        default=2, ge=0, description="Kept for the standard interface; local backends have nothing to retry."
    )
    streaming: bool = Field(default=False, description="Route invoke() through the streaming path.")
    seed: int | None = Field(default=None, ge=0, description="Seed of every call; None draws one per call.")
    config: STARSConfig = Field(default_factory=STARSConfig, description="The STARS knobs.")
    backend: Any = Field(default=None, exclude=True, description="A Backend; None = embedded default.")
    reward: Any = Field(default=None, exclude=True, description="A RewardModel; None = GuardReward.")
    include_candidate_text: bool = Field(
        default=False,
        description="Put each candidate's text (rejected ones too) in stars_segment callback events. "
        "Never in chunks or messages.",
    )
    override_policy: OverridePolicy | None = Field(
        default=None,
        description="Which config fields call kwargs may change (stars_guard.overrides). None: all of them "
        "(whoever calls the model owns it); OverridePolicy(): only lowering max_tokens/timeout, and seed.",
    )

    @model_validator(mode="after")
    def _check(self) -> STARSChatModel:
        if self.model is None:
            self.model = self.backend.model_name if self.backend is not None else _default_model_name()
        self._config_for({})  # fail at construction on a bad temperature, max_tokens, ...
        return self

    # LangChain hooks --------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return LLM_TYPE

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "timeout": self.timeout,
            "seed": self.seed,
            "stars_config": self.config.model_dump(),
            "backend": "embedded" if self.backend is None else type(self.backend).__name__,
            "reward": "guard" if self.reward is None else str(getattr(self.reward, "name", type(self.reward))),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        config = self.config
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=kwargs["model"] if isinstance(kwargs.get("model"), str) else str(self.model),
            ls_model_type="chat",
            ls_temperature=float(_first_set(kwargs.get("temperature"), self.temperature, config.temperature)),
            ls_max_tokens=int(_first_set(kwargs.get("max_tokens"), self.max_tokens, config.max_new_tokens)),
        )
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids from the backend's own tokenizer where it has one (no GPT-2 download)."""
        tokenizer = getattr(self._backend(), "tokenizer", None)
        if tokenizer is None:
            return super().get_token_ids(text)
        return list(tokenizer.encode(text, add_special_tokens=False))

    # One loop (`_steps`) translates engine events for all four entry points; they differ only in
    # whether they yield the chunks or keep the final message, and in how events are dispatched.

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, stop, kwargs)
        for _ in _chunks(call, SegmentEventDispatcher(run_manager)):
            pass
        return _chat_result(call.assembler)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # LangChain's stream() and streaming invoke() pass no run manager (only stream_events v3
        # does): decisions then reach handlers on the chunks (on_llm_new_token) and in on_llm_end.
        call = self._prepare(messages, stop, kwargs)
        yield from _chunks(call, SegmentEventDispatcher(run_manager))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, stop, kwargs)
        async for _ in _achunks(call, AsyncSegmentEventDispatcher(run_manager)):
            pass
        return _chat_result(call.assembler)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        async with aclosing(_achunks(call, AsyncSegmentEventDispatcher(run_manager))) as chunks:
            async for chunk in chunks:  # closed at once when the consumer leaves: the worker stops
                yield chunk

    # Resolution -------------------------------------------------------------------------------

    def resolved_components(self) -> tuple[Backend, RewardModel]:
        """The backend and reward model this instance runs (loads the embedded default if needed)."""
        return self._backend(), self._reward()

    def _backend(self) -> Backend:
        return self.backend if self.backend is not None else default_backend()

    def _reward(self) -> RewardModel:
        return self.reward if self.reward is not None else default_reward()

    def _config_for(self, kwargs: dict[str, Any]) -> STARSConfig:
        """Config < model fields < call kwargs; validated (a bad value raises `ConfigError`).

        The fields are the model owner's; only call kwargs pass `override_policy` (when set), each
        judged against the fields' config and named as the caller spelled it.
        """
        base = self.config.with_overrides(
            temperature=self.temperature, max_new_tokens=self.max_tokens, time_budget_s=self.timeout, seed=self.seed
        )
        overrides: dict[str, Any] = {}
        names: dict[str, str] = {}
        for key, value in kwargs.items():
            field_name = _LANGCHAIN_TO_CONFIG.get(key, key)
            overrides[field_name] = value
            names[field_name] = key
        if self.override_policy is None:
            return base.with_overrides(**overrides)
        return self.override_policy.apply(base, overrides, names=names)

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        kwargs = {key: value for key, value in kwargs.items() if key not in _LANGCHAIN_CONTROL_KWARGS}
        requested_model = kwargs.pop("model", None)
        if requested_model is not None and requested_model != self.model:
            raise ValueError(
                f"STARSChatModel runs {self.model!r} and cannot switch models per call (got model="
                f"{requested_model!r}): build another STARSChatModel with backend=... for that model"
            )
        include_text = bool(kwargs.pop("include_candidate_text", self.include_candidate_text))
        unknown = sorted(key for key in kwargs if key not in _CONFIG_FIELDS and key not in _LANGCHAIN_TO_CONFIG)
        if unknown:
            raise TypeError(
                f"unexpected argument(s) {', '.join(unknown)} for STARSChatModel; pass STARSConfig fields "
                f"({', '.join(sorted(_CONFIG_FIELDS))}) or max_tokens, timeout, stop, model"
            )
        config = self._config_for(kwargs)
        seed = config.seed if config.seed is not None else secrets.randbelow(_SEED_LIMIT)
        config = config.with_overrides(seed=seed)
        turns = to_chat_messages(messages)
        stops = stop if stop is not None else self.stop
        engine = STARSEngine(self._backend(), self._reward(), config)
        return _Call(engine, turns, list(stops) if stops else None, include_text, _Assembler(str(self.model), seed))


def _first_set(*values: Any) -> Any:
    return next(value for value in values if value is not None)


def _chat_result(assembler: _Assembler) -> ChatResult:
    if assembler.result is None:  # pragma: no cover - the engine always finishes
        raise RuntimeError("the STARS engine ended without a result")
    return ChatResult(generations=[ChatGeneration(message=assembler.message(assembler.result))])


# The one loop over engine events ---------------------------------------------------------------

# What the loop hands on: a chunk to yield, or a decision to dispatch as a `stars_segment` event.
_Step = STARSGenerationChunk | dict[str, Any]


def _steps(call: _Call) -> Generator[_Step, None, None]:
    """Every engine event of one request, translated once for all four entry points.

    Sync and async differ only in how they dispatch decisions, so the translation lives here and
    the chunk layout cannot drift between them. However the loop ends (finished, raised, a
    consumer that left early), the engine's generation is closed, which frees its KV cache.
    """
    events = call.engine.stream(call.turns, stop=call.stop)
    try:
        for event in events:
            chunk = call.assembler.feed(event)
            if isinstance(event, CandidateJudged):
                yield segment_payload(event, include_text=call.include_text)
            if chunk is not None:
                yield chunk
    finally:
        events.close()


def _chunks(call: _Call, dispatch: SegmentEventDispatcher) -> Iterator[STARSGenerationChunk]:
    """The request's chunks; decisions go to `dispatch` as they are judged."""
    with closing(_steps(call)) as steps:
        for step in steps:
            if isinstance(step, STARSGenerationChunk):
                yield step
            else:
                dispatch(step)


async def _achunks(call: _Call, dispatch: AsyncSegmentEventDispatcher) -> AsyncIterator[STARSGenerationChunk]:
    """`_chunks` with the loop in a worker thread; async handlers are awaited on the event loop."""
    async with aclosing(iterate_in_thread(lambda: _steps(call))) as steps:
        async for step in steps:
            if isinstance(step, STARSGenerationChunk):
                yield step
            else:
                await dispatch(step)
