"""`STARSMiddleware`: guarded decoding for a LangChain v1 agent (`create_agent`) in one line.

    agent = create_agent(ChatOpenAI(base_url="http://127.0.0.1:8000/v1", model=...), tools,
                         middleware=[STARSMiddleware()])

Every model call of the agent goes through STARS: the middleware swaps the request's model for a
`STARSChatModel` before the agent's own handler binds the tools and structured-output format,
so tool calls are drafted under their grammar, judged as `guard_tool_calls` says, and only
accepted text and whole accepted calls reach the agent (and its stream). A call that was
rejected never reaches the agent's tool node, so it is never executed. Needs the `agents` extra
(`langchain>=1.5`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("STARSMiddleware needs LangChain v1 agents: pip install 'stars-guard[agents]'") from exc

from stars_guard.config import STARSConfig
from stars_guard.langchain.chat_model import STARSChatModel
from stars_guard.langchain.servers import (
    HOW_TO,
    UndrivableModelError,
    is_openai_compatible,
    openai_target,
    server_backend,
)
from stars_guard.protocols import Backend, RewardModel
from stars_guard.specs import check_spec

__all__ = ["STARSMiddleware", "UndrivableModelError"]

# Sampling fields of an OpenAI-compatible chat model that carry over to the STARS model driving it.
_CARRIED_FIELDS = ("temperature", "top_p", "max_tokens", "seed")


class STARSMiddleware(AgentMiddleware):
    """Routes an agent's model calls through STARS, on the agent's own model or on the one it is given.

    Which model writes the answers, in order:

    1. the agent's own model when it is a `STARSChatModel` (its backend, reward and config kept);
    2. `model`, or a `STARSChatModel` built from `backend` (an object or a spec as on the command
       line, e.g. `backend="llama-server:http://127.0.0.1:8080"`; `backend="local"` is the
       embedded 135M model), when given;
    3. the agent's own model driven by STARS when it is an OpenAI-compatible chat model
       (`ChatOpenAI(base_url=...)`, `init_chat_model(..., base_url=...)`) on a server STARS has a
       backend for (llama-server, vLLM; SGLang and llama-cpp-python's server with `tokenizer=`):
       the same base URL, model name and API key, and its temperature, top_p, max_tokens and seed.
       The server is probed once per agent model (`stars_guard.langchain.servers`);
    4. otherwise `UndrivableModelError` at the first model call, saying how to give one. The
       embedded model never stands in for an agent's model unasked.

    `reward` and `config` apply to the models of 2 and 3 (`reward`: an object or a spec).
    """

    def __init__(
        self,
        model: STARSChatModel | None = None,
        *,
        backend: Backend | str | None = None,
        reward: RewardModel | str | None = None,
        config: STARSConfig | None = None,
        tokenizer: str | Path | Any | None = None,
    ) -> None:
        super().__init__()
        if model is not None and (backend is not None or reward is not None or config is not None):
            raise ValueError("pass either model= or backend=/reward=/config=, not both")
        if isinstance(reward, str):
            check_spec("reward", reward)  # a typo fails here, not at the agent's first call
        self.reward = reward
        self.config = config or STARSConfig()
        self.tokenizer = tokenizer
        if model is None and backend is not None:
            model = STARSChatModel(backend=backend, reward=reward, config=self.config)  # a spec is checked here
        self.model = model
        self._driven: dict[int, tuple[Any, STARSChatModel]] = {}  # id(agent model) -> (it, its STARS model)
        self._lock = threading.Lock()

    def guarded_model(self, agent_model: Any) -> STARSChatModel:
        """The model that answers for `agent_model` (see the class docstring); probes a server once."""
        if isinstance(agent_model, STARSChatModel):
            return agent_model
        if self.model is not None:
            return self.model
        if not is_openai_compatible(agent_model):
            raise UndrivableModelError(
                f"STARSMiddleware cannot drive the agent's model ({type(agent_model).__name__}): STARS needs "
                f"token-level control of the model, through a backend; {HOW_TO}"
            )
        with self._lock:
            known = self._driven.get(id(agent_model))
            if known is None or known[0] is not agent_model:
                known = (agent_model, self._drive(agent_model))
                self._driven[id(agent_model)] = known
            return known[1]

    def _drive(self, agent_model: Any) -> STARSChatModel:
        """A STARS model on the server `agent_model` talks to (raises `UndrivableModelError`)."""
        target = openai_target(agent_model)
        _, backend = server_backend(target, tokenizer=self.tokenizer)
        fields = {name: getattr(agent_model, name, None) for name in _CARRIED_FIELDS}
        stop = getattr(agent_model, "stop", None)
        return STARSChatModel(
            backend=backend,
            reward=self.reward,
            config=self.config,
            model=backend.model_name,  # what answers: llama-server's own name; the asked-for name on openai:
            stop=[stop] if isinstance(stop, str) else stop,
            **{name: value for name, value in fields.items() if value is not None},
        )

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
        return handler(request.override(model=self.guarded_model(request.model)))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        # the first call of an agent model may probe its server: blocking HTTP, off the event loop
        model = await asyncio.to_thread(self.guarded_model, request.model)
        return await handler(request.override(model=model))
