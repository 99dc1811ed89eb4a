"""`STARSMiddleware`: guarded decoding for a LangChain v1 agent (`create_agent`) in one line.

    agent = create_agent(model, tools, middleware=[STARSMiddleware()])

Every model call of the agent goes through STARS: the middleware swaps the request's model for a
`STARSChatModel` before the agent's own handler binds the tools and structured-output format,
so tool calls are drafted under their grammar, judged as `guard_tool_calls` says, and only
accepted text and whole accepted calls reach the agent (and its stream). A call that was
rejected never reaches the agent's tool node, so it is never executed. Needs the `agents` extra
(`langchain>=1.5`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("STARSMiddleware needs LangChain v1 agents: pip install 'stars-guard[agents]'") from exc

from stars_guard.config import STARSConfig
from stars_guard.langchain.chat_model import STARSChatModel
from stars_guard.protocols import Backend, RewardModel
from stars_guard.specs import build_backend, build_reward


class STARSMiddleware(AgentMiddleware):
    """Routes an agent's model calls through STARS.

    Which model writes the answers: the agent's own when it already is a `STARSChatModel` (its
    backend, reward and config are kept), else `model` when given, else a `STARSChatModel` built
    from `backend`, `reward` and `config` (the embedded default where they are None; specs as
    on the command line, e.g. `backend="llama-server:http://127.0.0.1:8080"`). An agent whose
    model is a chat API cannot be driven token by token: give this middleware a backend for the
    same model (the vLLM or llama-server that serves it) and it answers every call instead.
    """

    def __init__(
        self,
        model: STARSChatModel | None = None,
        *,
        backend: Backend | str | None = None,
        reward: RewardModel | str | None = None,
        config: STARSConfig | None = None,
    ) -> None:
        super().__init__()
        if model is not None and (backend is not None or reward is not None or config is not None):
            raise ValueError("pass either model= or backend=/reward=/config=, not both")
        if model is None:
            model = STARSChatModel(
                backend=build_backend(backend) if isinstance(backend, str) else backend,
                reward=build_reward(reward) if isinstance(reward, str) else reward,
                config=config or STARSConfig(),
            )
        self.model = model

    def guarded_model(self, agent_model: Any) -> STARSChatModel:
        """The model that answers for `agent_model` (see the class docstring)."""
        return agent_model if isinstance(agent_model, STARSChatModel) else self.model

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
        return handler(request.override(model=self.guarded_model(request.model)))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        return await handler(request.override(model=self.guarded_model(request.model)))
