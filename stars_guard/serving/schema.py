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
    apply_system_policy,
    normalize_messages,
)
from stars_guard.overrides import DEFAULT_POLICY, MAX_SEED, OverridePolicy
from stars_guard.serving.errors import OpenAIError

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


class Message(BaseModel):
    """One turn; `developer` is OpenAI's newer name for `system`. Tool and function turns are refused."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Content = Field(None, validate_default=True)

    @field_validator("content")
    @classmethod
    def _content_present(cls, content: Any, info: ValidationInfo) -> Any:
        if content is None and info.data.get("role", "assistant") != "assistant":
            raise PydanticCustomError("content_type", "not text content")
        return content

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


# The request ------------------------------------------------------------------------------------


class ResponseFormat(BaseModel):
    """Only plain text: a client asking for JSON output would silently get prose otherwise."""

    type: Literal["text"]


NonEmpty = Annotated[str, Field(min_length=1, strict=True)]
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
Number = StrictInt | StrictFloat  # kept as sent (9 stays 9 in messages), never a bool or a string


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat completions request, as far as this service reads it (field order: check order)."""

    messages: Annotated[list[Message], Field(min_length=1)]
    model: StrictStr | None = None  # accepted and echoed back
    user: StrictStr | None = None
    n: Any = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    tools: Any = None
    functions: Any = None
    logprobs: Any = None
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
        if "max_completion_tokens" in present:  # OpenAI's newer name wins; the older one is not read at all
            present.pop("max_tokens", None)
        return present

    @field_validator("messages")
    @classmethod
    def _conversation(cls, messages: list[Message]) -> list[Message]:
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

    @field_validator("tools", "functions", "logprobs")
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value:  # empty or false: nothing asked for, nothing lost
            name = str(info.field_name)
            reason = "" if name == "logprobs" else ": this endpoint does not call tools"
            raise _refusal(f"{name} are not supported{reason}", code="unsupported_parameter")
        return value

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


def _turns(messages: list[Message]) -> list[dict[str, str]]:
    return [{"role": ROLE_ALIASES[message.role], "content": message.text()} for message in messages]


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

_MUST_BE = {
    "model": "a string",
    "user": "a string",
    "stream": "a boolean",
    "stream_options": "an object",
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
    if name == "response_format":
        message = "only response_format {'type': 'text'} is supported"
        return OpenAIError(400, message, param=name, code="unsupported_parameter")
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
    if len(loc) == 2:
        return OpenAIError(400, f"{where} must be an object with role and content", param=where)
    if loc[2] == "role":
        role = value.get("role") if kind == "missing" else value  # missing: the input is the message
        message = f"{where}.role is {role!r}; supported roles: system, user, assistant (no tool messages)"
        return OpenAIError(400, message, param=f"{where}.role")
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
