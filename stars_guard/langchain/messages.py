"""LangChain messages as engine turns, tool turns included.

An AI message's calls become the turn's `tool_calls` and each `ToolMessage` a `tool` turn; the
backend renders them with the model's chat template where it knows tools, else in the text format
of `stars_guard.tools` (`plain_turns`), so the model and the reward read the whole exchange.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages import ChatMessage as LCChatMessage

from stars_guard.errors import InvalidMessagesError
from stars_guard.messages import ROLE_ALIASES, ChatMessage, ToolCall, normalize_messages

# Earlier answers' reasoning is not part of what was said; providers drop it from history too.
# Tool-call blocks (LangChain's, Anthropic's tool_use) are rendered from the message's calls instead.
_SKIPPED_AI_BLOCKS = frozenset(
    {"reasoning", "thinking", "redacted_thinking", "tool_call", "tool_call_chunk", "tool_use"}
)


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[ChatMessage]:
    """LangChain messages as engine turns; text content only, `name` fields ignored.

    Function messages and other roles are refused rather than dropped: silently losing a turn
    would change what the answer responds to.
    """
    return normalize_messages([_turn(message, position) for position, message in enumerate(messages)])


def _turn(message: BaseMessage, position: int) -> ChatMessage:
    if isinstance(message, ToolMessage):
        return ChatMessage("tool", _text_of(message, position), tool_call_id=str(message.tool_call_id or ""))
    if isinstance(message, HumanMessage):
        return ChatMessage("user", _text_of(message, position))
    if isinstance(message, AIMessage):
        calls = [ToolCall(call["name"], call["args"], call.get("id") or "") for call in message.tool_calls]
        if not calls:  # a provider's own call blocks (Anthropic's tool_use) where tool_calls is empty
            calls = [
                ToolCall(block["name"], block.get("input") or {}, str(block.get("id") or ""))
                for block in _tool_use_blocks(message)
            ]
        return ChatMessage("assistant", _text_of(message, position), tool_calls=tuple(calls))
    if isinstance(message, SystemMessage):
        return ChatMessage("system", _text_of(message, position))
    if isinstance(message, LCChatMessage) and message.role.lower() in ROLE_ALIASES:
        return ChatMessage(ROLE_ALIASES[message.role.lower()], _text_of(message, position))
    kind = message.role if isinstance(message, LCChatMessage) else message.type
    raise InvalidMessagesError(
        f"message {position} is a {kind!r} message; STARSChatModel takes system, human, ai and tool messages"
    )


def _tool_use_blocks(message: AIMessage) -> list[Mapping[str, Any]]:
    if isinstance(message.content, str):
        return []
    return [
        block
        for block in message.content
        if isinstance(block, Mapping) and block.get("type") == "tool_use" and isinstance(block.get("name"), str)
    ]


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
            continue  # reasoning is dropped; tool calls are rendered from `message.tool_calls`
        else:
            kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            raise InvalidMessagesError(
                f"message {position} has a {kind!r} content block; only text content is supported"
            )
    return "".join(parts)
