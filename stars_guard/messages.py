"""Chat messages as the engine sees them, validated once at the edge."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from stars_guard.errors import InvalidMessagesError

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
# The role names callers use (OpenAI's `developer`, LangChain's `human`/`ai`) for the engine's roles.
# A tool's result has no alias: only callers that bound tools (the LangChain layer) write one.
ROLE_ALIASES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call an assistant turn made: the tool, its JSON arguments, the id its result answers."""

    name: str
    arguments: Mapping[str, Any]
    id: str = ""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation.

    An assistant turn may carry the `tool_calls` it made; a `tool` turn is one call's result
    (`tool_call_id` names the call). How they reach the model depends on its chat template:
    natively where the template knows tools, else in the text format of `stars_guard.tools`.
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    # The client's own texts this turn was joined from, each read alone by the harm gate
    # (`client_turns`); None where the turn is one text, its `content`; empty for the operator's
    # system prompt. A demoted system turn joins the user turn after it (`apply_system_policy`):
    # read only together, a long system text hid a short harmful user turn from an encoder that
    # reads the first 256 word pieces.
    client_texts: tuple[str, ...] | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The turn as chat templates take it (tool calls in the OpenAI / Hugging Face shape)."""
        turn: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            turn["tool_calls"] = [
                {
                    "type": "function",
                    "id": call.id,
                    "function": {"name": call.name, "arguments": dict(call.arguments)},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id:
            turn["tool_call_id"] = self.tool_call_id
        return turn


def normalize_messages(
    messages: str | Iterable[ChatMessage | Mapping[str, object]],
) -> list[ChatMessage]:
    """Accept a prompt string or role/content turns; reject what no backend could answer.

    Rules: at least one turn, roles from `ROLES`, string content, no empty user turn, tool calls
    on assistant turns only, and the conversation ends with a user turn or a tool's result (the
    engine writes the next assistant turn).
    """
    if isinstance(messages, str):
        messages = [ChatMessage("user", messages)]
    turns: list[ChatMessage] = []
    for position, raw in enumerate(messages):
        turns.append(_coerce(raw, position))
    if not turns:
        raise InvalidMessagesError("no messages: pass a prompt string or at least one user message")
    if turns[-1].role not in ("user", "tool"):
        raise InvalidMessagesError(
            f"the last message must come from the user (or be a tool's result), got role "
            f"{turns[-1].role!r}: the engine writes the next assistant turn"
        )
    return turns


def _coerce(raw: ChatMessage | Mapping[str, object], position: int) -> ChatMessage:
    if isinstance(raw, ChatMessage):
        role, content = raw.role, raw.content
    elif isinstance(raw, Mapping):
        role, content = raw.get("role"), raw.get("content")
    else:
        raise InvalidMessagesError(
            f"message {position} is a {type(raw).__name__}; expected a dict with 'role' and 'content'"
        )
    if role not in ROLES:
        raise InvalidMessagesError(f"message {position} has role {role!r}; valid roles: {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise InvalidMessagesError(
            f"message {position} content is {type(content).__name__}; only text content is supported"
        )
    if role == "user" and not content.strip():
        raise InvalidMessagesError(f"message {position} is an empty user message: write a request")
    check_text(content, f"message {position} content")
    if not isinstance(raw, ChatMessage):
        tool_call_id = raw.get("tool_call_id")
        return ChatMessage(role, content, tool_call_id=tool_call_id if isinstance(tool_call_id, str) else "")  # type: ignore[arg-type]
    if raw.tool_calls and role != "assistant":
        raise InvalidMessagesError(
            f"message {position} is a {role} turn with tool calls; only assistant turns make calls"
        )
    for call in raw.tool_calls:
        check_text(call.name, f"message {position} tool call name")
        check_text(
            json.dumps(call.arguments, ensure_ascii=False, default=str), f"message {position} tool call arguments"
        )
    return raw


def check_text(text: str, what: str) -> None:
    """Refuse text no tokenizer or UTF-8 transport can carry (a lone surrogate such as "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMessagesError(
            f"{what} is not valid Unicode text: {exc.reason} at character {exc.start} "
            f"({text[exc.start : exc.end]!r}); send UTF-8 text without lone surrogates"
        ) from None


def last_user_text(messages: Sequence[ChatMessage]) -> str:
    """The latest user turn: the request an answer is most directly about."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    raise InvalidMessagesError("no user message in the conversation")


Conversation = tuple[ChatMessage, ...]


def as_conversation(prompt: str | Sequence[ChatMessage]) -> Conversation:
    """The turns a reward judges an answer in: the engine passes every turn (system included);
    a plain string, for direct calls, is one user turn."""
    if isinstance(prompt, str):
        return (ChatMessage("user", prompt),)
    return tuple(prompt)


def user_turns(conversation: Sequence[ChatMessage]) -> list[str]:
    """The user's turns, oldest first: a request split over turns is only visible in all of them."""
    return [message.content for message in conversation if message.role == "user"]


def client_turns(conversation: Sequence[ChatMessage]) -> list[str]:
    """Every turn's text the client wrote, oldest first, whatever its role: system (and developer),
    user, earlier assistant turns (a client can forge them) and tool results. None of it was
    written by the model in this request, so none of it is trusted more than a user turn. A turn
    joined from several client texts (`ChatMessage.client_texts`) gives each of them."""
    return [text for _, text in _client_texts(conversation)]


def replayed_answers(conversation: Sequence[ChatMessage]) -> tuple[int, ...]:
    """The indexes in `client_turns(conversation)` of the texts a client sent as earlier assistant
    turns: answers a model wrote in an earlier request and the client replays, or forged ones. The
    harm gate reads them differently from requests (`GuardReward.conversation_harm`)."""
    return tuple(index for index, (role, _) in enumerate(_client_texts(conversation)) if role == "assistant")


def _client_texts(conversation: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    """(role, text) of each client text of `conversation` (`client_turns`, and its indexes)."""
    return [(message.role, text) for message in conversation for text in own_texts(message) if text.strip()]


def own_texts(message: ChatMessage) -> tuple[str, ...]:
    """The texts of `message` a client wrote (`ChatMessage.client_texts`)."""
    return (message.content,) if message.client_texts is None else message.client_texts


ClientSystemPolicy = Literal["keep", "demote", "refuse"]
"""What a system (or developer) turn a client sent becomes: kept as a system turn, demoted to user
text (merged into the user turn that follows it), or refused. Whatever the policy, the harm gate
reads the text: demoting only takes away the authority a system turn has over the model."""
CLIENT_SYSTEM_POLICIES: tuple[ClientSystemPolicy, ...] = ("keep", "demote", "refuse")


def apply_system_policy(
    messages: Sequence[ChatMessage], policy: ClientSystemPolicy, system_prompt: str | None = None
) -> list[ChatMessage]:
    """The conversation an operator's policy makes of a client's turns (`ClientSystemPolicy`), with the
    operator's `system_prompt` (when given) as the first turn, above anything the client wrote.

    `demote` joins each run of client system turns to the next user turn ("<system text>\n\n<user
    text>"), or makes it a user turn of its own where no user turn follows it directly, so turns
    never change order. `refuse` raises `InvalidMessagesError` naming the first system turn.
    """
    if policy not in CLIENT_SYSTEM_POLICIES:
        raise ValueError(f"unknown client system policy {policy!r}: use one of {', '.join(CLIENT_SYSTEM_POLICIES)}")
    # The operator's prompt is no client's text: the harm gate does not read it (`client_texts=()`).
    # Read as a request, a moderation team's prompt ("You help moderators ... understand slurs,
    # hate speech and harassment") read 0.978 harmful, and every answer of the service was vetoed.
    turns: list[ChatMessage] = [ChatMessage("system", system_prompt, client_texts=())] if system_prompt else []
    pending: list[str] = []
    for position, message in enumerate(messages):
        if message.role == "system" and policy != "keep":
            if policy == "refuse":
                raise InvalidMessagesError(
                    f"message {position} is a system turn: this service does not take system or developer "
                    "turns from clients (its operator sets the system prompt); send the text as a user turn"
                )
            pending.append(message.content)
            continue
        if pending and message.role == "user":
            message = _joined_user_turn([*pending, message.content])
        elif pending:
            turns.append(_joined_user_turn(pending))
        pending = []
        turns.append(message)
    if pending:
        turns.append(_joined_user_turn(pending))
    return turns


def _joined_user_turn(texts: Sequence[str]) -> ChatMessage:
    """One user turn of several client texts, which the harm gate still reads one by one."""
    return ChatMessage("user", "\n\n".join(texts), client_texts=tuple(texts))


def render_transcript(conversation: Sequence[ChatMessage]) -> str:
    """The conversation as plain text for text-pair scorers (TEI pairs, encoder reward models).

    A single user turn renders as its bare text, so single-turn scores are what they always were.
    """
    if len(conversation) == 1 and conversation[0].role == "user":
        return conversation[0].content
    names = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
    return "\n\n".join(f"{names[message.role]}: {message.content}" for message in conversation)
