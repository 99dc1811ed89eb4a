"""`STARSMiddleware` in a real LangChain v1 agent (`create_agent`), on a scripted backend and reward.

The scripted backend writes what a constrained model would (a call, then an answer from the tool's
result); the agent, its tool node and its streaming are LangChain's own.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool

from stars_guard import STARSConfig
from stars_guard.errors import SpecError
from stars_guard.langchain.chat_model import STARSChatModel
from stars_guard.langchain.middleware import STARSMiddleware
from stars_guard.protocols import OpenRequest
from stars_guard.tools import render_tool_call
from tests.doubles import KeywordReward, ScriptedBackend

CONFIG = STARSConfig(
    threshold_mode="absolute",
    reward_threshold=0.5,
    alpha=1.0,
    safety_floor=0.2,
    segment_size=16,
    segment_budget="flat",  # one round of 4 per segment: a vetoed round ends the attempts
    max_attempts=4,
)
SENT: list[dict[str, Any]] = []


@tool
def send_email(to: str, body: str) -> str:
    """Send an email."""
    SENT.append({"to": to, "body": body})
    return "sent"


def pieces(text: str) -> list[str]:
    return [text[start : start + 16] for start in range(0, len(text), 16)] + ["<eos>"]


def agent_script(call_body: str):
    """First turn: the call (K candidates per round, all the same); after the tool's result: a reply."""

    def script(request: OpenRequest) -> list[list[str]]:
        if request.messages[-1].role == "tool":
            return [[piece] * 4 for piece in pieces("Done: the email is sent.")]
        call = render_tool_call("send_email", {"to": "bob@example.com", "body": call_body})
        return [[piece] * 4 for piece in pieces(call)]

    return script


def guarded_agent(call_body: str) -> tuple[Any, ScriptedBackend, GenericFakeChatModel]:
    backend = ScriptedBackend(agent_script(call_body), constraint_support="segments")
    stars = STARSChatModel(backend=backend, reward=KeywordReward("BAD"), config=CONFIG)
    unused = GenericFakeChatModel(messages=iter([AIMessage("the agent's own model must not answer")]))
    agent = create_agent(unused, [send_email], middleware=[STARSMiddleware(stars)])
    return agent, backend, unused


def test_the_agent_calls_the_tool_through_stars_and_answers_from_its_result():
    SENT.clear()
    agent, backend, _ = guarded_agent("lunch at noon?")
    result = agent.invoke({"messages": [HumanMessage("email bob about lunch")]})
    messages = result["messages"]
    calls = [m for m in messages if isinstance(m, AIMessage) and m.tool_calls]
    assert calls[0].tool_calls[0]["args"] == {"to": "bob@example.com", "body": "lunch at noon?"}
    assert calls[0].response_metadata["stars"]["tool_call_candidates"] > 0
    assert isinstance(messages[-2], ToolMessage) and messages[-1].content == "Done: the email is sent."
    assert SENT == [{"to": "bob@example.com", "body": "lunch at noon?"}]
    tools_bound = backend.opened[0]["constraint"]
    assert tools_bound.tool_names == ("send_email",) and not tools_bound.required  # the agent's 'auto'
    result_turn = backend.opened[1]["messages"][-1]
    assert (result_turn.role, result_turn.content) == ("tool", "sent")


def test_a_vetoed_call_is_never_executed_nor_streamed():
    SENT.clear()
    agent, _, _ = guarded_agent("you BAD person")
    streamed: list[AIMessageChunk] = []
    for chunk, _ in agent.stream({"messages": [HumanMessage("insult bob by email")]}, stream_mode="messages"):
        if isinstance(chunk, AIMessageChunk):
            streamed.append(chunk)
    assert SENT == []  # never executed
    assert not any(chunk.tool_call_chunks for chunk in streamed)  # never streamed, not even in part
    assert "BAD" not in "".join(str(chunk.content) for chunk in streamed)
    assert "".join(str(chunk.content) for chunk in streamed) == CONFIG.refusal_message


def test_the_agents_own_stars_model_is_kept():
    backend = ScriptedBackend(agent_script("hi"), constraint_support="segments")
    own = STARSChatModel(backend=backend, reward=KeywordReward(), config=CONFIG)
    middleware = STARSMiddleware()
    assert middleware.guarded_model(own) is own
    assert middleware.guarded_model(GenericFakeChatModel(messages=iter([]))) is middleware.model
    with pytest.raises(ValueError, match="either model= or backend="):
        STARSMiddleware(own, config=CONFIG)
    with pytest.raises(SpecError, match="unknown backend"):
        STARSMiddleware(backend="nonsense:x")
