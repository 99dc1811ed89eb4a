"""Chat messages as the engine sees them, validated once at the edge."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from stars_guard.errors import InvalidMessagesError

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation."""

    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def normalize_messages(
    messages: str | Iterable[ChatMessage | Mapping[str, object]],
) -> list[ChatMessage]:
    """Accept a prompt string or role/content turns; reject what no backend could answer.

    Rules: at least one turn, roles from `ROLES`, string content, no empty user turn, and the
    conversation ends with a user turn (the engine writes the next assistant turn).
    """
    if isinstance(messages, str):
        messages = [ChatMessage("user", messages)]
    turns: list[ChatMessage] = []
    for position, raw in enumerate(messages):
        turns.append(_coerce(raw, position))
    if not turns:
        raise InvalidMessagesError("no messages: pass a prompt string or at least one user message")
    if turns[-1].role != "user":
        raise InvalidMessagesError(
            f"the last message must come from the user, got role {turns[-1].role!r}: "
            "the engine writes the next assistant turn"
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
    return ChatMessage(role, content)  # type: ignore[arg-type]


def last_user_text(messages: Sequence[ChatMessage]) -> str:
    """The request the reward model judges the answer against: the latest user turn."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    raise InvalidMessagesError("no user message in the conversation")
