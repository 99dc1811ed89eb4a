"""`STARSChatModel`: the STARS engine as a LangChain chat model.

Thin by design: it converts LangChain messages to the engine's `ChatMessage`, maps the standard
LangChain parameters onto `STARSConfig`, and turns engine events into chunks and callback events.
Every decision is the engine's; this module adds none.

Streaming contract (docs/langchain.md): one `AIMessageChunk` per accepted segment as the engine
releases it, then a final empty chunk (`chunk_position="last"`) carrying `usage_metadata`,
`finish_reason`, the seed and the complete `stars` statistics (and `stars_segments`, the
per-candidate decisions, when `include_segments` asks for them). `model_name` rides on the first
chunk only. LangChain's chunk merge concatenates strings and keeps equal ints instead of adding
them, so nothing that merges badly is split across chunks, and the merged stream equals `invoke`.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from contextlib import aclosing, closing
from dataclasses import dataclass
from typing import Any

try:
    from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
    from langchain_core.language_models import BaseChatModel, LanguageModelInput
    from langchain_core.language_models.base import LangSmithParams
    from langchain_core.language_models.model_profile import ModelProfile
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
    from langchain_core.messages.ai import UsageMetadata
    from langchain_core.messages.tool import ToolCall, tool_call, tool_call_chunk
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from langchain_core.runnables import Runnable
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("STARSChatModel needs langchain-core: pip install 'stars-guard[langchain]'") from exc
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from stars_guard.config import STARSConfig
from stars_guard.engine import STARSEngine
from stars_guard.events import CandidateJudged, Event, STARSResult, TextEmitted
from stars_guard.langchain.callbacks import AsyncSegmentEventDispatcher, SegmentEventDispatcher
from stars_guard.langchain.messages import to_chat_messages
from stars_guard.langchain.threads import iterate_in_thread
from stars_guard.langchain.tools import (
    StructuredOutputMethod,
    ToolLike,
    openai_tools,
    structured_output,
    tool_choice_name,
    tool_specs,
)
from stars_guard.messages import ChatMessage, ClientSystemPolicy, apply_system_policy
from stars_guard.overrides import OverridePolicy
from stars_guard.protocols import Backend, RewardModel, unwrapped
from stars_guard.round_sizing import RoundCosts
from stars_guard.specs import build_backend, build_reward, check_spec
from stars_guard.telemetry.aggregator import segment_payload
from stars_guard.tools import (
    CallPiece,
    OutputConstraint,
    ParsedCall,
    TextPiece,
    ToolCallSplitter,
    tool_constraint,
)

__all__ = ["STARSChatModel", "to_chat_messages"]

logger = logging.getLogger(__name__)

PROVIDER = "stars_guard"
LLM_TYPE = "stars-guard"
# LangChain names of STARSConfig fields; any other STARSConfig field may be passed by its own name.
_LANGCHAIN_TO_CONFIG = {"max_tokens": "max_new_tokens", "timeout": "time_budget_s"}
_CONFIG_FIELDS = frozenset(STARSConfig.model_fields)
# Call kwargs LangChain itself may pass through to `_generate`/`_stream` (the structured-output
# trace is for LangSmith only).
_LANGCHAIN_CONTROL_KWARGS = frozenset({"stream", "ls_structured_output_format"})
# What `bind_tools` and `with_structured_output` bind: they shape the answer, not the STARS loop.
_OUTPUT_KWARGS = frozenset({"tools", "tool_choice", "parallel_tool_calls", "response_format"})
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

    With tools bound, accepted text goes through a `ToolCallSplitter`: plain text streams as
    content, and a call becomes one chunk with its whole `tool_call_chunks` entry once the call
    has closed (LangChain parses partial JSON leniently, so a call is never sent in parts). A
    call that does not read as one (only possible where drafting was not under a grammar) is
    reported in `response_metadata["stars_invalid_tool_calls"]`, never as a call.
    """

    def __init__(
        self, model_name: str, seed: int, tool_names: Sequence[str] | None = None, *, include_segments: bool = False
    ) -> None:
        self.model_name = model_name
        self.seed = seed
        self.include_segments = include_segments
        self.decisions: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._first = True
        self.result: STARSResult | None = None
        self._splitter = None if tool_names is None else ToolCallSplitter(tool_names)
        self._calls: list[ToolCall] = []
        self._invalid: list[dict[str, Any]] = []
        self._plain_text: list[str] = []  # the content, without the calls

    def feed(self, event: Event) -> list[STARSGenerationChunk]:
        """The chunks to yield for `event` (none for a decision: it rides on the next chunk)."""
        if isinstance(event, CandidateJudged):
            decision = segment_payload(event, include_text=False)
            self.decisions.append(decision)
            self._pending.append(decision)
            return []
        if isinstance(event, TextEmitted):
            if self._splitter is None:
                return [self._text_chunk(event.text)]
            return [self._piece_chunk(piece) for piece in self._splitter.feed(event.text)]
        self.result = event.result
        chunks = [] if self._splitter is None else [self._piece_chunk(p) for p in self._splitter.finish()]
        metadata = {**self._opening(), **self._closing(event.result)}
        last = AIMessageChunk(
            content="", chunk_position="last", usage_metadata=_usage(event.result), response_metadata=metadata
        )
        return [*chunks, self._chunk(last)]

    def message(self, result: STARSResult) -> AIMessage:
        """The whole answer as `invoke` returns it (after every event was fed)."""
        content = result.text if self._splitter is None else "".join(self._plain_text)
        metadata = {"model_name": self.model_name, "model_provider": PROVIDER, **self._closing(result)}
        return AIMessage(
            content=content, tool_calls=list(self._calls), response_metadata=metadata, usage_metadata=_usage(result)
        )

    def _piece_chunk(self, piece: TextPiece | CallPiece) -> STARSGenerationChunk:
        if isinstance(piece, TextPiece):
            self._plain_text.append(piece.text)
            return self._text_chunk(piece.text)
        return self._call_chunk(piece.call)

    def _text_chunk(self, text: str) -> STARSGenerationChunk:
        return self._chunk(AIMessageChunk(content=text, response_metadata=self._opening()))

    def _call_chunk(self, call: ParsedCall) -> STARSGenerationChunk:
        if call.error is not None or call.name is None or call.arguments is None:
            self._invalid.append({"name": call.name, "args": call.raw, "error": call.error})
            return self._text_chunk("")
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        self._calls.append(tool_call(name=call.name, args=call.arguments, id=call_id))
        index = len(self._calls) - 1
        chunk_entry = tool_call_chunk(name=call.name, args=json.dumps(call.arguments), id=call_id, index=index)
        message = AIMessageChunk(content="", tool_call_chunks=[chunk_entry], response_metadata=self._opening())
        return self._chunk(message)

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
        closing: dict[str, Any] = {
            "finish_reason": openai_finish_reason(result.finish_reason, bool(self._calls)),
            "stars_finish_reason": result.finish_reason,
            "seed": self.seed,
            "stars": result.stats.as_dict(),
        }
        if self.include_segments:
            closing["stars_segments"] = list(self.decisions)
        if self._invalid:
            closing["stars_invalid_tool_calls"] = list(self._invalid)
        return closing


# The engine's finish reasons in OpenAI's words (what LangChain code written for ChatOpenAI checks).
# The budget of time cuts an answer short as the token budget does: "length". The engine's own
# reason stays in `stars_finish_reason`.
_OPENAI_FINISH = {"stop": "stop", "length": "length", "refusal": "content_filter", "time_budget": "length"}


def openai_finish_reason(reason: str, has_tool_calls: bool) -> str:
    """`finish_reason` as OpenAI writes it: `tool_calls` for an answer that ended on its calls."""
    if reason == "stop" and has_tool_calls:
        return "tool_calls"
    return _OPENAI_FINISH.get(reason, reason)


def _usage(result: STARSResult) -> UsageMetadata:
    """Token counts as LangChain defines them: `output_tokens` is every token sampled (the sum of the
    output token types), so cost views count the candidates STARS threw away.

    `output_token_details["stars_rejected"]` is the part of them that never reached the answer
    (rejected or unjudged candidates, and text cut at a stop string), like `reasoning` tokens for
    a reasoning model; the answer's own tokens are `stars["tokens_emitted"]` in `response_metadata`.
    """
    prompt, sampled = result.stats.prompt_tokens, result.stats.tokens_sampled
    emitted = result.stats.tokens_emitted
    sampled = max(sampled, emitted)
    return UsageMetadata(
        input_tokens=prompt,
        output_tokens=sampled,
        total_tokens=prompt + sampled,
        output_token_details={"stars_rejected": sampled - emitted},  # type: ignore[typeddict-unknown-key]
    )


# The chat model ----------------------------------------------------------------------------------


@dataclass
class _Call:
    """Everything one request needs, resolved from fields and call kwargs."""

    engine: STARSEngine
    turns: list[ChatMessage]
    stop: list[str] | None
    include_text: bool
    assembler: _Assembler
    constraint: OutputConstraint | None = None


class STARSChatModel(BaseChatModel):
    """A LangChain chat model whose answers are written by STARS (guarded decoding).

    `STARSChatModel()` uses the embedded default (local SmolLM2-135M-Instruct and the offline
    `GuardReward`, loaded on first use and shared per process). Pass `backend=` / `reward=` for
    any adapter, as an object or as a spec string like the CLI's `--backend` / `--reward`
    (`backend="openai:http://127.0.0.1:8000"`: checked at construction, built on first use, so
    building a model never loads weights or opens a connection), and `config=` for the STARS
    knobs. Standard LangChain fields map onto the config: `max_tokens` -> `max_new_tokens`,
    `timeout` -> `time_budget_s` (the answer ends when it is spent: `finish_reason="length"`,
    `stars_finish_reason="time_budget"`), `temperature` (0 = greedy: one candidate per segment,
    still scored, so the safety floor still applies), `top_p`, `seed` (drawn per call when unset).
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
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus sampling mass (config.top_p).")
    max_tokens: int | None = Field(default=None, description="Most tokens in the answer (max_new_tokens).")
    stop: list[str] | None = Field(default=None, description="Strings that end the answer (not emitted).")
    timeout: float | None = Field(default=None, description="Wall-clock budget per request in seconds.")
    max_retries: int = Field(
        default=2, ge=0, description="Kept for the standard interface; local backends have nothing to retry."
    )
    streaming: bool = Field(default=False, description="Route invoke() through the streaming path.")
    seed: int | None = Field(default=None, ge=0, description="Seed of every call; None draws one per call.")
    config: STARSConfig = Field(default_factory=STARSConfig, description="The STARS knobs.")
    backend: Any = Field(
        default=None,
        exclude=True,
        description="A Backend, or a spec as for `--backend` ('openai:http://host:8000', 'llama-server:URL', "
        "'local', ...), built on first use; None = the embedded default.",
    )
    reward: Any = Field(
        default=None,
        exclude=True,
        description="A RewardModel, or a spec as for `--reward` ('default', 'tei:URL', ...), built on first use; "
        "None = GuardReward.",
    )
    include_segments: bool = Field(
        default=False,
        description="Put every candidate's decision (no text) in response_metadata['stars_segments']. "
        "Off by default: a long answer has hundreds; callbacks receive them either way.",
    )
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
    system_prompt: str | None = Field(
        default=None, description="The owner's system prompt, placed first in every call, above the caller's turns."
    )
    client_system: ClientSystemPolicy = Field(
        default="keep",
        description="What a caller's system message becomes: 'keep' (the default: whoever calls the model owns "
        "it), 'demote' (merged into the next user turn: the guard reads it, the model gets no system-role "
        "instructions from it) or 'refuse' (InvalidMessagesError), as for `stars-guard serve --client-system`.",
    )

    _built: dict[str, Any] = PrivateAttr(default_factory=dict)  # backend / reward built from a spec
    _build_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _round_costs: RoundCosts = PrivateAttr(default_factory=RoundCosts)  # learnt across calls (adaptive rounds)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for kind in ("backend", "reward"):
            if isinstance(kwargs.get(kind), str):
                check_spec(kind, kwargs[kind])  # a SpecError as the CLI gives, not pydantic's wrapping of it
        super().__init__(*args, **kwargs)

    @model_validator(mode="after")
    def _check(self) -> STARSChatModel:
        for kind, value in (("backend", self.backend), ("reward", self.reward)):
            if isinstance(value, str):
                check_spec(kind, value)  # a bad spec fails here (SpecError); building waits for first use
        if self.model is None:
            if self.backend is None or self.backend == "local":
                self.model = _default_model_name()
            elif not isinstance(self.backend, str):
                self.model = self.backend.model_name
            # else: a spec's model name is known once it is built (an HTTP server is asked then)
        self._config_for({})  # fail at construction on a bad temperature, max_tokens, ...
        return self

    def _resolve_model_profile(self) -> ModelProfile | None:
        """What `create_agent` and other LangChain code may rely on.

        `structured_output` is False: STARS holds a JSON schema under a grammar, but not together
        with bound tools in one answer, which is how `create_agent`'s provider strategy asks for it;
        so `create_agent(..., response_format=...)` uses its tool strategy (a forced call) instead.
        """
        return ModelProfile(
            text_inputs=True,
            text_outputs=True,
            image_inputs=False,
            audio_inputs=False,
            video_inputs=False,
            pdf_inputs=False,
            tool_calling=True,
            tool_choice=True,
            tool_call_streaming=True,
            structured_output=False,
            temperature=True,
        )

    @property
    def model_label(self) -> str:
        """The model's name, or its backend spec while the spec is not built yet."""
        if self.model is not None:
            return self.model
        return str(self.backend)

    # LangChain hooks --------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return LLM_TYPE

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model_label,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "timeout": self.timeout,
            "seed": self.seed,
            "stars_config": self.config.model_dump(),
            "backend": _component_label(self.backend, "embedded"),
            "reward": _component_label(self.reward, "guard"),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        config = self.config
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=kwargs["model"] if isinstance(kwargs.get("model"), str) else self.model_label,
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
        tokenizer = getattr(unwrapped(self._backend()), "tokenizer", None)  # the adapter under any wrappers
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
        if self.backend is None or self.backend == "local":
            return default_backend()  # the embedded default, shared per process
        if not isinstance(self.backend, str):
            return self.backend
        backend = self._build("backend", self.backend)
        if self.model is None:
            self.model = backend.model_name
        return backend

    def _reward(self) -> RewardModel:
        if self.reward is None or self.reward == "default":
            return default_reward()
        if not isinstance(self.reward, str):
            return self.reward
        return self._build("reward", self.reward)

    def _build(self, kind: str, spec: str) -> Any:
        """The backend or reward of a spec, built once per instance (on first use: it may load a model)."""
        with self._build_lock:
            if kind not in self._built:
                self._built[kind] = build_backend(spec) if kind == "backend" else build_reward(spec)
            return self._built[kind]

    def _config_for(self, kwargs: dict[str, Any]) -> STARSConfig:
        """Config < model fields < call kwargs; validated (a bad value raises `ConfigError`).

        The fields are the model owner's; only call kwargs pass `override_policy` (when set), each
        judged against the fields' config and named as the caller spelled it.
        """
        fields = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_tokens,
            "time_budget_s": self.timeout,
            "seed": self.seed,
        }
        # An unset model field (None) keeps the config's value; a call kwarg of None is applied.
        base = self.config.with_overrides(**{key: value for key, value in fields.items() if value is not None})
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
        backend, reward = self._backend(), self._reward()  # a spec is built here, on first use
        requested_model = kwargs.pop("model", None)
        if requested_model is not None and requested_model != self.model:
            raise ValueError(
                f"STARSChatModel runs {self.model!r} and cannot switch models per call (got model="
                f"{requested_model!r}): build another STARSChatModel with backend=... for that model"
            )
        include_text = bool(kwargs.pop("include_candidate_text", self.include_candidate_text))
        include_segments = bool(kwargs.pop("include_segments", self.include_segments))
        output = {key: kwargs.pop(key) for key in _OUTPUT_KWARGS if key in kwargs}
        unknown = sorted(key for key in kwargs if key not in _CONFIG_FIELDS and key not in _LANGCHAIN_TO_CONFIG)
        if unknown:
            raise TypeError(
                f"unexpected argument(s) {', '.join(unknown)} for STARSChatModel; pass STARSConfig fields "
                f"({', '.join(sorted(_CONFIG_FIELDS))}) or max_tokens, timeout, stop, model (tools and "
                "structured output: bind_tools, with_structured_output)"
            )
        config = self._config_for(kwargs)
        seed = config.seed if config.seed is not None else secrets.randbelow(_SEED_LIMIT)
        config = config.with_overrides(seed=seed)
        constraint = _answer_shape(output)
        turns = apply_system_policy(to_chat_messages(messages), self.client_system, self.system_prompt)
        stops = stop if stop is not None else self.stop
        engine = STARSEngine(backend, reward, config, self._round_costs)
        tool_names = constraint.tool_names if constraint is not None and constraint.kind == "tool_calls" else None
        assembler = _Assembler(self.model_label, seed, tool_names, include_segments=include_segments)
        return _Call(engine, turns, list(stops) if stops else None, include_text, assembler, constraint)

    # Tools and structured output ----------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[ToolLike],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """This model with `tools` it may call (LangChain tools, pydantic models, functions, OpenAI dicts).

        `tool_choice`: 'auto' (default: text or calls), 'any'/'required' (a call: one, or one or
        more with `parallel_tool_calls=True`), a tool's name (that call, once), 'none' (text only).
        Calls are drafted under a grammar where the backend has one, so they are valid JSON for
        their tool's schema; the guard judges them as `config.guard_tool_calls` says (docs/agents.md).
        `strict` is accepted for compatibility (`create_agent` passes it): under a grammar the schema holds.
        """
        formatted = openai_tools(tools)
        names = [spec.name for spec in tool_specs(formatted)]
        choice = tool_choice_name(tool_choice, names)
        bound: dict[str, Any] = {"tools": formatted, **kwargs}
        if choice is not None:
            bound["tool_choice"] = choice
        if parallel_tool_calls is not None:
            bound["parallel_tool_calls"] = parallel_tool_calls
        return self.bind(**bound)

    def with_structured_output(
        self,
        schema: Any = None,
        *,
        method: StructuredOutputMethod = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """This model answering in `schema` (pydantic model, TypedDict, JSON schema, OpenAI tool).

        `method`: 'json_schema' (the answer is the JSON value, drafted under the schema's grammar),
        'function_calling' (a forced call of a tool named after the schema), 'json_mode' (any JSON
        object; held to `schema` when one is given). Returns pydantic objects for pydantic
        schemas, else dicts; `include_raw=True` gives `{"raw", "parsed", "parsing_error"}`.
        `strict` is accepted for compatibility: under a grammar the schema always holds.
        """
        if kwargs:
            raise ValueError(f"unexpected argument(s) {', '.join(sorted(kwargs))} for with_structured_output")
        return structured_output(self, schema, method, include_raw)


def _answer_shape(output: dict[str, Any]) -> OutputConstraint | None:
    """The constraint for what `bind_tools` / structured output bound (the backend renders its instruction)."""
    schema = _schema_of(output.get("response_format"))
    if schema is not None:
        if output.get("tools"):
            raise ValueError(
                "STARS holds either tools or a JSON response format in one answer, not both (as create_agent's "
                "ProviderStrategy asks): use create_agent(..., response_format=ToolStrategy(Schema)), a forced call"
            )
        return OutputConstraint("json_schema", schema=schema)
    tools = tool_specs(output.get("tools") or [])
    # A forced answer is one call unless parallel calls are asked for: a small model given room for
    # more keeps calling the same tool until the token budget.
    return tool_constraint(
        tools, output.get("tool_choice"), parallel_tool_calls=output.get("parallel_tool_calls") is True
    )


def _schema_of(response_format: Any) -> Any:
    """The JSON schema of a bound response format: ours (the schema itself) or OpenAI's
    `{"type": "json_schema", "json_schema": {"schema": ...}}` (create_agent's provider strategy)."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        inner = response_format.get("json_schema")
        if isinstance(inner, dict) and isinstance(inner.get("schema"), dict):
            return inner["schema"]
        raise ValueError("response_format of type 'json_schema' needs json_schema.schema, a JSON schema object")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "text":
        return None  # plain text: nothing to constrain
    return response_format


def _component_label(component: Any, default: str) -> str:
    if component is None:
        return default
    if isinstance(component, str):
        return component
    return str(getattr(component, "name", type(component).__name__))


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
    events = call.engine.stream(call.turns, stop=call.stop, constraint=call.constraint)
    try:
        for event in events:
            chunks = call.assembler.feed(event)
            if isinstance(event, CandidateJudged):
                yield segment_payload(event, include_text=call.include_text)
            yield from chunks
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
