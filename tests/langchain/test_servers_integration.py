"""STARS on real OpenAI-compatible servers on 127.0.0.1: a backend spec string, and an agent whose
`ChatOpenAI(base_url=...)` model the middleware drives on the same server.

llama.cpp's llama-server (`tests.engines.llama_server`) and llama-cpp-python's server run the
pulled SmolLM2 GGUF; the reward is the real default `GuardReward`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from stars_guard.adapters.llamaserver_backend import LlamaServerBackend
from stars_guard.adapters.openai_backend import OpenAICompletionsBackend
from stars_guard.langchain.chat_model import STARSChatModel
from stars_guard.langchain.middleware import STARSMiddleware, UndrivableModelError
from stars_guard.models import default_lm_dir, llamacpp_lm_gguf
from tests.adapters import servers
from tests.loopback import ServerProcess

pytestmark = pytest.mark.integration

FORECAST = "light rain, 14 C"


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return FORECAST


class CallOnUserTurn(AgentMiddleware):
    """Forces a call on the user's turn: the 135M model seldom calls a tool on its own."""

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        if isinstance(request.messages[-1], HumanMessage):
            request = request.override(tool_choice="any")
        return handler(request)


def test_a_backend_spec_string_drives_a_real_server(llama_server: ServerProcess) -> None:
    llm = STARSChatModel(backend=f"llama-server:{llama_server.url}", max_tokens=16, seed=1)
    assert llm.model is None  # nothing asked of the server at construction
    message = llm.invoke("Say hello.")
    backend, _ = llm.resolved_components()
    assert isinstance(backend, LlamaServerBackend) and backend.base_url == llama_server.url
    assert message.content and message.response_metadata["model_name"] == backend.model_name == llm.model
    assert message.response_metadata["stars"]["llm_calls"] > 0
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == message.response_metadata["stars"]["tokens_sampled"]


def test_an_agent_on_chatopenai_is_driven_on_the_same_llama_server(llama_server: ServerProcess) -> None:
    chat = ChatOpenAI(
        base_url=f"{llama_server.url}/v1", model="smollm2", api_key="sk-local", temperature=0.7, seed=3, max_tokens=48
    )
    guard = STARSMiddleware()
    agent = create_agent(chat, [get_weather], middleware=[CallOnUserTurn(), guard])
    messages = agent.invoke({"messages": [HumanMessage("What is the weather in Paris?")]}, {"recursion_limit": 6})[
        "messages"
    ]
    driven = guard.guarded_model(chat)
    assert guard.guarded_model(chat) is driven  # probed once per agent model
    backend, _ = driven.resolved_components()
    assert isinstance(backend, LlamaServerBackend) and backend.base_url == llama_server.url  # the same server
    assert (driven.temperature, driven.seed, driven.max_tokens) == (0.7, 3, 48)  # the agent model's settings
    answers = [m for m in messages if isinstance(m, AIMessage)]
    assert answers and all("stars" in m.response_metadata for m in answers)  # every answer written by STARS
    assert all(m.response_metadata["model_name"] == backend.model_name for m in answers)
    assert answers[0].tool_calls and answers[0].tool_calls[0]["name"] == "get_weather"
    assert answers[0].response_metadata["finish_reason"] == "tool_calls"
    assert any(isinstance(m, ToolMessage) and m.content == FORECAST for m in messages)  # the agent ran the call


@pytest.fixture(scope="module")
def llama_cpp_python_server() -> Iterator[ServerProcess]:
    gguf = llamacpp_lm_gguf()
    if not gguf.is_file():
        pytest.fail(f"the SmolLM2 GGUF is missing at {gguf}: run `stars-guard models pull`")
    with servers.llama_server(gguf, servers.free_port()) as server:
        yield server


def test_llama_cpp_pythons_server_is_driven_through_openai_given_the_tokenizer(
    llama_cpp_python_server: ServerProcess,
) -> None:
    chat = ChatOpenAI(base_url=f"{llama_cpp_python_server.url}/v1", model="smollm2", api_key="sk-local", seed=2)
    with pytest.raises(UndrivableModelError, match="tokenizer"):  # text prompts only: it says what is missing
        STARSMiddleware().guarded_model(chat)
    driven = STARSMiddleware(tokenizer=default_lm_dir()).guarded_model(chat)
    backend, _ = driven.resolved_components()
    assert isinstance(backend, OpenAICompletionsBackend) and backend.base_url == llama_cpp_python_server.url
    message = driven.invoke("Say hello.", max_tokens=12)
    assert message.content and message.response_metadata["stars"]["llm_calls"] > 0


def test_an_agent_on_chatopenai_is_driven_on_the_same_vllm(vllm_server: ServerProcess) -> None:
    """vLLM: the `openai:` backend, token ids both ways and the template through vLLM's `/tokenize`."""
    wrong = ChatOpenAI(base_url=f"{vllm_server.url}/v1", model="no-such-model", api_key="sk-local")
    with pytest.raises(UndrivableModelError, match="no-such-model"):  # the same model name, or nothing
        STARSMiddleware().guarded_model(wrong)
    chat = ChatOpenAI(
        base_url=f"{vllm_server.url}/v1", model="SmolLM2-135M-Instruct", api_key="sk-local", seed=5, max_tokens=48
    )
    guard = STARSMiddleware()
    agent = create_agent(chat, [get_weather], middleware=[CallOnUserTurn(), guard])
    messages = agent.invoke({"messages": [HumanMessage("What is the weather in Paris?")]}, {"recursion_limit": 6})[
        "messages"
    ]
    backend, _ = guard.guarded_model(chat).resolved_components()
    assert isinstance(backend, OpenAICompletionsBackend) and backend.base_url == vllm_server.url
    assert backend.features is not None and backend.features.token_prompts  # exact token continuation
    answers = [m for m in messages if isinstance(m, AIMessage)]
    assert answers and all("stars" in m.response_metadata for m in answers)
    assert answers[0].tool_calls and answers[0].tool_calls[0]["name"] == "get_weather"
    assert any(isinstance(m, ToolMessage) and m.content == FORECAST for m in messages)
