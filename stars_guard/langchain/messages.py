"""LangChain messages as engine turns, tool turns included.

Tool calls and results are rendered in the documented text format (`stars_guard.tools`): an
assistant turn's calls as `<tool_call>` blocks after its text, and each run of `ToolMessage`s as
one user turn of `<tool_response>` blocks, so the model and the reward read the whole exchange.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages import ChatMessage as LCChatMessage

from stars_guard.errors import InvalidMessagesError
from stars_guard.messages import ROLE_ALIASES, ChatMessage, normalize_messages
from stars_guard.tools import render_tool_call, render_tool_result

# Earlier answers' reasoning is not part of what was said; providers drop it from history too.
# Tool-call blocks (LangChain's, Anthropic's tool_use) are rendered from the message's calls instead.
_SKIPPED_AI_BLOCKS = frozenset(
    {"reasoning", "thinking", "redacted_thinking", "tool_call", "tool_call_chunk", "tool_use"}
)


def to_chat_messages(messages: Sequence[BaseMessage], instruction: str | None = None) -> list[ChatMessage]:
    """LangChain messages as engine turns; text content only, `name` fields ignored.

    `instruction` (the bound tools, a JSON schema to answer in) joins the first system turn, or
    becomes one. Function messages and other roles are refused rather than dropped: silently
    losing a turn would change what the answer responds to.
    """
    turns: list[ChatMessage] = []
    tool_results: list[str] = []
    for position, message in enumerate(messages):
        if isinstance(message, ToolMessage):
            tool_results.append(render_tool_result(_text_of(message, position)))
            continue
        if tool_results:
            turns.append(ChatMessage("user", "\n".join(tool_results)))
            tool_results = []
        turns.append(_turn(message, position))
    if tool_results:
        turns.append(ChatMessage("user", "\n".join(tool_results)))
    if instruction:
        turns = _with_instruction(turns, instruction)
    return normalize_messages(turns)


def _turn(message: BaseMessage, position: int) -> ChatMessage:
    if isinstance(message, HumanMessage):
        return ChatMessage("user", _text_of(message, position))
    if isinstance(message, AIMessage):
        calls = [render_tool_call(call["name"], call["args"]) for call in message.tool_calls]
        if not calls:  # a provider's own call blocks (Anthropic's tool_use) where tool_calls is empty
            calls = [render_tool_call(block["name"], block.get("input") or {}) for block in _tool_use_blocks(message)]
        text = _text_of(message, position)
        return ChatMessage("assistant", "\n".join(part for part in (text, *calls) if part))
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


def _with_instruction(turns: list[ChatMessage], instruction: str) -> list[ChatMessage]:
    if turns and turns[0].role == "system":
        first = turns[0].content
        return [ChatMessage("system", f"{first}\n\n{instruction}" if first else instruction), *turns[1:]]
    return [ChatMessage("system", instruction), *turns]


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
