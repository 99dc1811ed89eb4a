"""`STARSMiddleware` in a real LangChain v1 agent (`create_agent`), on a scripted backend and reward,
and its choice of the model that answers (the agent's own, the one it was given, or an error).

The scripted backend writes what a constrained model would (a call, then an answer from the tool's
result); the agent, its tool node and its streaming are LangChain's own.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.chat_models import init_chat_model
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stars_guard import STARSConfig
from stars_guard.errors import SpecError
from stars_guard.langchain.chat_model import STARSChatModel
from stars_guard.langchain.middleware import STARSMiddleware, UndrivableModelError
from stars_guard.langchain.servers import is_openai_compatible, openai_target
from stars_guard.protocols import OpenRequest
from stars_guard.tools import render_tool_call
from tests.doubles import KeywordReward, ScriptedBackend
from tests.loopback import ThreadedServer, free_port

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
    given = STARSChatModel(backend=ScriptedBackend(agent_script("x")), reward=KeywordReward(), config=CONFIG)
    assert STARSMiddleware().guarded_model(own) is own
    assert STARSMiddleware(given).guarded_model(own) is own  # the agent's own STARS model wins
    assert STARSMiddleware(given).guarded_model(GenericFakeChatModel(messages=iter([]))) is given
    with pytest.raises(ValueError, match="either model= or backend="):
        STARSMiddleware(own, config=CONFIG)


def test_a_backend_spec_builds_a_model_lazily_and_a_bad_spec_fails_at_once():
    embedded = STARSMiddleware(backend="local")  # the embedded model, asked for by name
    assert embedded.model is not None and embedded.model.backend == "local"
    remote = STARSMiddleware(backend="llama-server:http://127.0.0.1:9", reward="tei:http://127.0.0.1:9", config=CONFIG)
    assert remote.model is not None and remote.model.config == CONFIG
    assert remote.model.model is None  # llama-server's name comes from the server, on first use
    with pytest.raises(SpecError, match="unknown backend"):
        STARSMiddleware(backend="nonsense:x")
    with pytest.raises(SpecError, match="unknown option"):
        STARSMiddleware(backend="openai:http://127.0.0.1:9?modle=x")
    with pytest.raises(SpecError, match="unknown reward"):
        STARSMiddleware(reward="nonsense")


def test_a_model_stars_cannot_drive_is_refused_with_the_way_out():
    middleware = STARSMiddleware()  # no model, no backend: it must drive the agent's own model
    with pytest.raises(UndrivableModelError, match=r"GenericFakeChatModel.*STARSMiddleware\(backend="):
        middleware.guarded_model(GenericFakeChatModel(messages=iter([])))
    with pytest.raises(UndrivableModelError, match="OpenAI's hosted chat API"):
        middleware.guarded_model(ChatOpenAI(model="gpt-4.1", api_key="sk-test"))  # no base_url


def test_an_agent_on_an_undrivable_model_fails_instead_of_answering_with_another():
    agent = create_agent(
        GenericFakeChatModel(messages=iter([AIMessage("x")])), [send_email], middleware=[STARSMiddleware()]
    )
    with pytest.raises(UndrivableModelError, match="STARSMiddleware"):
        agent.invoke({"messages": [HumanMessage("hi")]})


def test_an_unreachable_server_is_an_error_not_a_fallback():
    llm = init_chat_model("openai:SmolLM2", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="sk-local")
    with pytest.raises(UndrivableModelError, match="cannot reach"):
        STARSMiddleware().guarded_model(llm)


def not_a_model_server() -> Starlette:
    """A real HTTP server on loopback that serves no model API at all (every path is a 404)."""

    async def missing(request: Request) -> Response:
        return JSONResponse({"error": "not found"}, status_code=404)

    return Starlette(routes=[Route("/{path:path}", missing, methods=["GET", "POST"])])


def test_a_server_that_is_no_model_server_is_refused_with_the_servers_answer():
    with ThreadedServer(not_a_model_server()) as server:
        llm = ChatOpenAI(base_url=f"{server.url}/v1", model="m", api_key="sk-local")
        with pytest.raises(UndrivableModelError, match=r"neither llama-server nor .*404"):
            STARSMiddleware().guarded_model(llm)


@pytest.mark.parametrize(
    ("base_url", "root"),
    [("http://h:8000/v1", "http://h:8000"), ("http://h:8000/v1/", "http://h:8000"), ("http://h:8080", "http://h:8080")],
)
def test_the_target_is_the_servers_root_with_the_models_name_and_key(base_url: str, root: str):
    target = openai_target(ChatOpenAI(base_url=base_url, model="served-name", api_key="sk-secret"))
    assert (target.base_url, target.model, target.api_key) == (root, "served-name", "sk-secret")
    assert "sk-secret" not in repr(target)
    assert is_openai_compatible(ChatOpenAI(base_url=base_url, api_key="k"))
    assert not is_openai_compatible(GenericFakeChatModel(messages=iter([])))


async def test_the_async_path_makes_the_same_choice():
    SENT.clear()
    agent, _, _ = guarded_agent("see you at noon")
    result = await agent.ainvoke({"messages": [HumanMessage("email bob")]})
    assert result["messages"][-1].content == "Done: the email is sent."
    assert SENT == [{"to": "bob@example.com", "body": "see you at noon"}]
    unguarded = GenericFakeChatModel(messages=iter([AIMessage("x")]))
    with pytest.raises(UndrivableModelError, match="STARSMiddleware"):
        await create_agent(unguarded, [send_email], middleware=[STARSMiddleware()]).ainvoke(
            {"messages": [HumanMessage("hi")]}
        )
