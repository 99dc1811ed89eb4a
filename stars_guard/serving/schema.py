"""The chat completions request as pydantic models, and the `ChatRequest` a worker runs.

Two steps, each with one job:

1. Shape. `ChatCompletionRequest` is the plain OpenAI request (the fields this service reads;
   others are ignored, `null` means absent); `StarsChatCompletionRequest` adds the `stars`
   extension (`STARSConfig` fields). A validation error becomes an OpenAI 400 whose `param`
   names the field as the client spelled it (`messages[0].content`, `stars.seed`) and whose
   message says what it must be. Features a client would silently lose (tools, logprobs,
   structured output, n > 1) are refused rather than ignored, and every string of the body must
   be valid Unicode (a lone surrogate is a 400 `invalid_text`, not a 500 in a tokenizer).
2. Policy. The overrides (`stars`, then `max_tokens` / `temperature` / `top_p` / `seed` over the
   operator's config) pass `stars_guard.overrides.OverridePolicy`: a locked field is a 400
   `locked_parameter`, an invalid value a 400 naming it.

Precedence: server config < `stars` < the OpenAI parameters. Without any seed one is drawn (and
reported in the answer), so every answer can be reproduced. Nothing here knows HTTP.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from stars_guard.config import STARSConfig
from stars_guard.errors import ConfigError, InvalidMessagesError, LockedOverrideError
from stars_guard.messages import (
    ROLE_ALIASES,
    ChatMessage,
    ClientSystemPolicy,
    ToolCall,
    apply_system_policy,
    normalize_messages,
)
from stars_guard.overrides import DEFAULT_POLICY, MAX_SEED, OverridePolicy
from stars_guard.serving.errors import OpenAIError
from stars_guard.tools import OutputConstraint, ToolSpec, tool_constraint

_SEED_LIMIT = 2**31  # seeds drawn for requests without one; a client may send any seed up to MAX_SEED


def _refusal(message: str, *, code: str | None = None, **param: str | None) -> PydanticCustomError:
    """A validation error already in OpenAI's words; without `param=`, the param is the field's own name."""
    return PydanticCustomError(code or "invalid_value", "{message}", {"message": message, "code": code, **param})


# Messages ---------------------------------------------------------------------------------------


class TextPart(BaseModel):
    """`{"type": "text", "text": ...}`, the one content part a text model can take."""

    type: Literal["text"]
    text: StrictStr


def _text_part(value: Any, handler: Callable[[Any], TextPart]) -> TextPart:
    """One error per bad part, naming its type (an image part is refused as `'image_url'`)."""
    try:
        return handler(value)
    except ValidationError:
        kind = value.get("type") if isinstance(value, dict) else type(value).__name__
        raise PydanticCustomError("content_part", "not a text part", {"kind": kind}) from None


def _content_kind(value: Any) -> str | None:
    """Which shape to validate: only that one is, so an error names one problem, not one per union member."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "parts"
    return "none" if value is None else None


# String content, a list of text parts (joined by newlines), or none (an assistant turn only).
Content = Annotated[
    Annotated[StrictStr, Tag("text")]
    | Annotated[list[Annotated[TextPart, WrapValidator(_text_part)]], Tag("parts")]
    | Annotated[None, Tag("none")],
    Discriminator(_content_kind, custom_error_type="content_type", custom_error_message="not text content"),
]


class FunctionCall(BaseModel):
    """`{"name": ..., "arguments": "<JSON text>"}` of an earlier assistant turn's tool call."""

    name: StrictStr
    arguments: StrictStr


class AssistantToolCall(BaseModel):
    """One call an earlier assistant turn made (OpenAI's shape: arguments as JSON text)."""

    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One turn; `developer` is OpenAI's newer name for `system`. Assistant turns may carry the
    `tool_calls` they made, and a `tool` turn answers one of them (`tool_call_id`)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content = Field(None, validate_default=True)
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(str(key) for key in value if key not in cls.model_fields and value[key] is not None)
            if unknown:
                raise PydanticCustomError("message_field", "unknown field", {"field": unknown[0]})
        return value

    @field_validator("content")
    @classmethod
    def _content_present(cls, content: Any, info: ValidationInfo) -> Any:
        if content is None and info.data.get("role", "assistant") != "assistant":
            raise PydanticCustomError("content_type", "not text content")
        return content

    @model_validator(mode="after")
    def _tool_fields(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise _refusal(f"a {self.role} turn cannot carry tool_calls: only assistant turns make calls")
        if self.role == "tool" and not self.tool_call_id:
            raise _refusal("a tool turn needs the tool_call_id of the call it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise _refusal(f"a {self.role} turn cannot carry a tool_call_id: only tool turns answer calls")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


# The request ------------------------------------------------------------------------------------


Name = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9_-]{1,64}$")]  # OpenAI's rule for function names


class FunctionDefinition(BaseModel):
    """A function the model may call: its name, what it is for, and its arguments' JSON schema."""

    name: Name
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None  # calls are always drafted under the schema: strict or not, they match it


class ToolDefinition(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: StrictStr


class NamedToolChoice(BaseModel):
    """`{"type": "function", "function": {"name": ...}}`: that function must be called."""

    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    """`response_format.json_schema`: the answer is one JSON value matching `schema`."""

    model_config = ConfigDict(populate_by_name=True)

    name: Name
    description: StrictStr | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None  # drafted under the schema either way


class ResponseFormat(BaseModel):
    """Plain text, any JSON object, or JSON matching a schema; JSON is drafted under a grammar."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise _refusal("response_format of type 'json_schema' needs a json_schema object", param="response_format")
        return self

    def schema_of_answer(self) -> dict[str, Any] | None:
        """The JSON schema the answer must match; None for text."""
        if self.type == "text":
            return None
        if self.type == "json_object" or self.json_schema is None or self.json_schema.json_schema is None:
            return {"type": "object"}
        return self.json_schema.json_schema


NonEmpty = Annotated[str, Field(min_length=1, strict=True)]
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
Number = StrictInt | StrictFloat  # kept as sent (9 stays 9 in messages), never a bool or a string


class StreamOptions(BaseModel):
    """`include_usage`: a last chunk with `usage` and no choices, as OpenAI sends it."""

    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool | None = None
    include_obfuscation: Literal[False] | None = None  # no obfuscation padding is added; asking for it is refused


# OpenAI parameters this service does not honour: accepted only at the value that asks for nothing
# (a tuple of such values; none: any value is refused), else a 400 naming the parameter and why.
_NOT_HONOURED: dict[str, tuple[tuple[Any, ...], str]] = {
    "frequency_penalty": ((0,), "repetition penalties are not applied: STARS drafts and judges whole segments"),
    "presence_penalty": ((0,), "repetition penalties are not applied: STARS drafts and judges whole segments"),
    "logit_bias": (({},), "token biases are not applied: STARS drafts and judges whole segments"),
    "logprobs": ((False,), "log probabilities are not returned"),
    "top_logprobs": ((0,), "log probabilities are not returned"),
    "store": ((False,), "stored completions are not supported"),
    "metadata": (({},), "stored completions (and their metadata) are not supported"),
    "modalities": ((["text"],), "only text output is supported"),
    "service_tier": (("auto", "default"), "there are no service tiers here"),
    "audio": ((), "only text output is supported"),
    "prediction": ((), "predicted outputs are not supported"),
    "reasoning_effort": ((), "the model has no reasoning settings"),
    "verbosity": ((), "the model has no verbosity setting"),
    "web_search_options": ((), "there is no web search here"),
    "functions": (([],), "the deprecated functions API is not supported: send tools"),
    "function_call": ((), "the deprecated functions API is not supported: send tool_choice"),
}
# Accepted and not passed to the model: who is asking and cache hints, which never change an answer.
_IDENTIFIERS = ("user", "safety_identifier", "prompt_cache_key")


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat completions request (field order: check order). A parameter this service does
    not know is a 400 (as OpenAI answers one it does not know), and so is one it would not honour."""

    messages: Annotated[list[Message], Field(min_length=1)]
    model: StrictStr | None = None  # accepted and echoed back
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    n: Any = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None
    stop: NonEmpty | list[NonEmpty] | None = None
    max_completion_tokens: StrictInt | None = None
    max_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    seed: Seed | None = None

    @model_validator(mode="before")
    @classmethod
    def _screen(cls, body: Any) -> Any:
        if not isinstance(body, dict):
            raise _refusal(f"the request body must be a JSON object, got {type(body).__name__}", param=None)
        _refuse_unencodable(body)
        present = {key: value for key, value in body.items() if value is not None}  # null means absent
        for name, value in present.items():
            _refuse_unread(name, value, cls.model_fields)
        if "max_completion_tokens" in present:  # OpenAI's newer name wins; the older one is not read at all
            present.pop("max_tokens", None)
        return {key: value for key, value in present.items() if key not in _NOT_HONOURED}

    @field_validator("messages")
    @classmethod
    def _conversation(cls, messages: list[Message]) -> list[Message]:
        _check_tool_turns(messages)
        try:
            normalize_messages(_turns(messages))
        except InvalidMessagesError as exc:
            raise _refusal(str(exc), code="invalid_messages") from None
        return messages

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: Any) -> Any:
        if not _is_int(n) or n != 1:
            raise _refusal(f"only n=1 is supported (got {n!r})", code="unsupported_parameter")
        return n

    @field_validator("tools")
    @classmethod
    def _distinct_tools(cls, tools: list[ToolDefinition]) -> list[ToolDefinition]:
        names = [tool.function.name for tool in tools]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise _refusal(f"tools must have distinct names; {repeated[0]!r} is given more than once")
        return tools

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        names = [tool.function.name for tool in self.tools or ()]
        for param in ("tool_choice", "parallel_tool_calls"):
            if getattr(self, param) is not None and not names:
                raise _refusal(f"{param} is only allowed when tools are specified", param=param)
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            message = f"tool_choice names {choice.function.name!r}, which is not among the tools ({', '.join(names)})"
            raise _refusal(message, param="tool_choice")
        if self.response_format is not None and self.response_format.type != "text" and self._may_answer_in_text():
            raise _refusal(
                "response_format asks for JSON while tool_choice lets the model answer in text or call a tool; "
                "this service constrains an answer to one of the two: force a call (tool_choice 'required' "
                "or a named function), set tool_choice 'none', or drop response_format",
                param="response_format",
                code="unsupported_parameter",
            )
        return self

    @model_validator(mode="after")
    def _stream_options_need_a_stream(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise _refusal("stream_options is only allowed when stream is true", param="stream_options")
        return self

    def _may_answer_in_text(self) -> bool:
        return bool(self.tools) and self.tool_choice in (None, "auto")

    def constraint(self) -> OutputConstraint | None:
        """What the answer must look like: tool calls under `tool_choice`, or a JSON schema; None for free text."""
        if self.tools and self.tool_choice != "none":
            specs = [
                ToolSpec(
                    tool.function.name,
                    tool.function.description or "",
                    tool.function.parameters or {"type": "object", "properties": {}},
                )
                for tool in self.tools
            ]
            choice = self.tool_choice
            name = choice.function.name if isinstance(choice, NamedToolChoice) else choice
            parallel = True if self.parallel_tool_calls is None else self.parallel_tool_calls
            return tool_constraint(specs, name, parallel)
        schema = None if self.response_format is None else self.response_format.schema_of_answer()
        return None if schema is None else OutputConstraint("json_schema", schema=schema)

    def turns(self) -> list[ChatMessage]:
        return normalize_messages(_turns(self.messages))

    def stop_strings(self) -> list[str] | None:
        values = [self.stop] if isinstance(self.stop, str) else self.stop
        return list(values) if values else None

    def config_overrides(self) -> dict[str, tuple[str, Any]]:
        """The parameters that set `STARSConfig` fields: field -> (parameter name, value)."""
        found: dict[str, tuple[str, Any]] = {}
        for name, field_name in _OPENAI_TO_CONFIG:
            value = getattr(self, name)
            if value is not None:
                found[field_name] = (name, value)
        return found


_OPENAI_TO_CONFIG = (
    ("max_completion_tokens", "max_new_tokens"),
    ("max_tokens", "max_new_tokens"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("seed", "seed"),
)


class StarsChatCompletionRequest(ChatCompletionRequest):
    """The OpenAI request plus `stars`: per-request `STARSConfig` overrides, judged by the policy later."""

    stars: dict[str, Any] | None = None

    @field_validator("stars")
    @classmethod
    def _stars_seed(cls, stars: dict[str, Any]) -> dict[str, Any]:
        seed = stars.get("seed")
        if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):  # null leaves it unchanged
            raise _refusal(_seed_range("stars.seed", seed), param="stars.seed")
        return stars

    def resolve_config(self, base: STARSConfig, policy: OverridePolicy) -> STARSConfig:
        """`stars` then the OpenAI parameters over `base`, each checked by `policy`.

        Every override is judged against the operator's `base`, never against another override, so
        sending a value twice (`stars.max_new_tokens` and `max_tokens`) cannot widen what is allowed.
        """
        stars = dict(self.stars or {})
        names = {key: f"stars.{key}" for key in stars}
        if stars:
            _apply_policy(policy, base, stars, names)  # the stars object is valid by itself
        openai = self.config_overrides()
        names.update({field_name: name for field_name, (name, _) in openai.items()})
        overrides = {**stars, **{field_name: value for field_name, (_, value) in openai.items()}}
        return _apply_policy(policy, base, overrides, names)


def _turns(messages: list[Message]) -> list[ChatMessage]:
    return [
        ChatMessage(
            "tool" if message.role == "tool" else ROLE_ALIASES[message.role],
            message.text(),
            tool_calls=tuple(
                ToolCall(call.function.name, json.loads(call.function.arguments, parse_constant=_no_constants), call.id)
                for call in message.tool_calls or ()
            ),
            tool_call_id=message.tool_call_id or "",
        )
        for message in messages
    ]


def _check_tool_turns(messages: list[Message]) -> None:
    """OpenAI's rules for tool turns: a call's arguments are a JSON object, and a tool turn answers a
    call of the assistant turn before its run of results."""
    open_calls: set[str] = set()
    for position, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id not in open_calls:
                raise _refusal(
                    f"messages[{position}] answers tool_call_id {message.tool_call_id!r}, which no preceding "
                    "assistant turn's tool_calls made: a tool turn must follow the assistant turn that made the call",
                    param=f"messages[{position}].tool_call_id",
                )
            continue
        open_calls = set()
        for index, call in enumerate(message.tool_calls or ()):
            where = f"messages[{position}].tool_calls[{index}].function.arguments"
            try:
                arguments = json.loads(call.function.arguments, parse_constant=_no_constants)
            except json.JSONDecodeError as exc:
                raise _refusal(f"{where} is not JSON: {exc.msg} at character {exc.pos}", param=where) from None
            except ValueError as exc:  # NaN or Infinity, which JSON does not have
                raise _refusal(f"{where} is not JSON: {exc}", param=where) from None
            except RecursionError:
                raise _refusal(f"{where} is nested too deeply", param=where) from None
            if not isinstance(arguments, dict):
                raise _refusal(f"{where} must be a JSON object", param=where)
            open_calls.add(call.id)


def _same_value(value: Any, neutral: Any) -> bool:
    """`0.0` is `0` (clients send either), but `False` is not `0` and `"0"` is not `0`."""
    if isinstance(neutral, int | float) and not isinstance(neutral, bool):
        return isinstance(value, int | float) and not isinstance(value, bool) and value == neutral
    return type(value) is type(neutral) and value == neutral


def _refuse_unread(name: str, value: Any, known: Mapping[str, Any]) -> None:
    """A parameter that is neither read nor harmless to drop is a 400 naming it (OpenAI's own
    answer to an unknown one), so a client never silently loses what it asked for."""
    if name in known or name in _IDENTIFIERS:
        return
    if name in _NOT_HONOURED:
        accepted, why = _NOT_HONOURED[name]
        if any(_same_value(value, neutral) for neutral in accepted):
            return
        shown = ", ".join(json.dumps(neutral) for neutral in accepted)
        detail = f" (only {shown}, which asks for nothing, is accepted)" if accepted else ""
        raise _refusal(f"{name} is not supported here: {why}{detail}", param=name, code="unsupported_parameter")
    raise _refusal(f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seed_range(param: str, value: Any) -> str:
    """Seeds reach the backends' 64-bit generators: anything else must be a 400 here, not a 500 there."""
    return f"{param} must be an integer from 0 to {MAX_SEED}, got {value!r}"


# From the body to a ChatRequest -----------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completions request: everything the worker needs, nothing of HTTP."""

    turns: list[ChatMessage]
    config: STARSConfig  # per-request config, seed resolved; the deadline is applied when it starts
    stop: list[str] | None
    stream: bool
    model: str | None  # as requested (echoed back); None when the client sent none
    constraint: OutputConstraint | None = None  # tool calls or a JSON schema the answer is drafted under
    include_usage: bool = False  # stream_options.include_usage: a last chunk with usage, no choices


def parse_json(raw: bytes) -> Any:
    """The request body as JSON; `NaN`, `Infinity` and bodies nested past the parser's limit are 400s too."""
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


def parse_chat_request(
    body: Any,
    base: STARSConfig,
    *,
    policy: OverridePolicy = DEFAULT_POLICY,
    seed_source: Callable[[], int] | None = None,
    client_system: ClientSystemPolicy = "keep",
    system_prompt: str | None = None,
) -> ChatRequest:
    """Validate an OpenAI chat completions body against `base`; raise `OpenAIError` (400) naming the field.

    `client_system` says what the client's system and developer turns become, and `system_prompt`
    is the operator's own, put first (`stars_guard.messages.apply_system_policy`)."""
    try:
        request = StarsChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise _openai_error(exc.errors(include_url=False)[0]) from None
    try:
        turns = apply_system_policy(request.turns(), client_system, system_prompt)
    except InvalidMessagesError as exc:
        raise OpenAIError(400, str(exc), param="messages", code="system_turn_not_allowed") from None
    config = request.resolve_config(base, policy)
    if config.seed is None:
        config = config.with_overrides(seed=(seed_source or _random_seed)())
    return ChatRequest(
        turns=turns,
        config=config,
        stop=request.stop_strings(),
        stream=bool(request.stream),
        model=request.model,
        constraint=request.constraint(),
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
    )


def _random_seed() -> int:
    return secrets.randbelow(_SEED_LIMIT)


def _apply_policy(
    policy: OverridePolicy, base: STARSConfig, overrides: Mapping[str, Any], names: Mapping[str, str]
) -> STARSConfig:
    """`policy.apply`, its errors as 400s whose `param` is the name the client used."""
    try:
        return policy.apply(base, overrides, names=names)
    except LockedOverrideError as exc:
        raise OpenAIError(400, str(exc), param=exc.params[0] if exc.params else None, code="locked_parameter") from None
    except ConfigError as exc:
        lines = str(exc).splitlines()[1:]
        fields = [line.strip().partition(":")[0] for line in lines if ":" in line]
        param = names.get(fields[0].partition(".")[0], "stars") if fields else "stars"
        if not param.startswith("stars"):  # an OpenAI parameter: said by its own name, as OpenAI does
            detail = "; ".join(line.strip().partition(": ")[2] for line in lines)
            raise OpenAIError(400, f"invalid value for {param}: {detail}", param=param) from None
        raise OpenAIError(400, str(exc), param=param, code="invalid_config") from None


# Validation errors in OpenAI's words ------------------------------------------------------------

# The structured parameters: what each must look like, said with pydantic's detail and the exact place.
_SHAPED = {
    "tools": 'a list of {"type": "function", "function": {"name", "description", "parameters"}} '
    "with names of letters, digits, _ and - (at most 64)",
    "tool_choice": '"none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
    "parallel_tool_calls": "a boolean",
    "response_format": '{"type": "text"}, {"type": "json_object"} or '
    '{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}',
    "stream_options": '{"include_usage": true|false}',
}

_MUST_BE = {
    "model": "a string",
    "user": "a string",
    "stream": "a boolean",
    "stars": "an object of STARSConfig fields",
}


def _openai_error(error: ErrorDetails) -> OpenAIError:
    """The 400 for pydantic's first error: the message this service has always given for that field."""
    loc, kind, value = error["loc"], error["type"], error["input"]
    context = error.get("ctx") or {}
    if "message" in context:  # raised by a validator above: already in OpenAI's words
        param = context["param"] if "param" in context else _param(loc)
        return OpenAIError(400, context["message"], param=param, code=context["code"])
    name = str(loc[0]) if loc else "the request body"
    if name == "messages":
        return _message_error(loc, kind, value, context)
    if name in ("max_completion_tokens", "max_tokens", "seed"):
        if kind in ("greater_than_equal", "less_than_equal"):  # only the seed has bounds
            return OpenAIError(400, _seed_range(name, value), param=name)
        return OpenAIError(400, f"{name} must be an integer, got {value!r}", param=name)
    if name in ("temperature", "top_p"):
        return OpenAIError(400, f"{name} must be a number, got {value!r}", param=name)
    if name in _SHAPED:
        where = _param(loc)
        return OpenAIError(400, f"invalid {where}: {_SHAPED[name]} ({error['msg']})", param=where)
    if name == "stop":
        return OpenAIError(400, "stop must be a non-empty string or a list of non-empty strings", param=name)
    return OpenAIError(400, f"{name} must be {_MUST_BE.get(name, 'valid')}", param=_param(loc))


def _message_error(loc: tuple[int | str, ...], kind: str, value: Any, context: Mapping[str, Any]) -> OpenAIError:
    if len(loc) == 1:
        if kind == "missing":
            message = "missing required parameter: messages"
            return OpenAIError(400, message, param="messages", code="missing_required_parameter")
        return OpenAIError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    where = f"messages[{loc[1]}]"
    if kind == "message_field":
        field = context["field"]
        why = (
            "participant names are not shown to the model here: put the name in the content"
            if field == "name"
            else "not a field of a chat message this service reads"
        )
        return OpenAIError(400, f"{where}.{field} is not supported: {why}", param=f"{where}.{field}")
    if len(loc) == 2:
        return OpenAIError(400, f"{where} must be an object with role and content", param=where)
    if loc[2] == "role":
        role = value.get("role") if kind == "missing" else value  # missing: the input is the message
        message = f"{where}.role is {role!r}; supported roles: system, developer, user, assistant, tool"
        return OpenAIError(400, message, param=f"{where}.role")
    if len(loc) > 3 and loc[2] == "tool_calls":
        place = _param(loc)
        message = f'invalid {place}: a tool call is {{"id", "type": "function", "function": {{"name", "arguments"}}}}'
        return OpenAIError(400, message, param=place)
    if kind == "content_part":
        message = (
            f"{where}.content[{loc[-1]}] is of type {context['kind']!r}: "
            "only text parts ({'type': 'text', 'text': ...}) are supported"
        )
        return OpenAIError(400, message, param=f"{where}.content")
    message = f"{where}.content must be a string or a list of text parts, got {type(value).__name__}"
    return OpenAIError(400, message, param=f"{where}.content")


def _param(loc: tuple[int | str, ...]) -> str | None:
    """`("messages", 0, "content")` -> `messages[0].content`, as OpenAI names parameters."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or None


# Text the rest of the stack could not carry -----------------------------------------------------


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


def _unencodable(param: str | None, subject: str) -> PydanticCustomError:
    return _refusal(
        f"{subject} not valid Unicode text: it holds a lone surrogate (a \\ud800-\\udfff escape without its pair), "
        "which cannot be encoded as UTF-8",
        code="invalid_text",
        param=param,
    )
