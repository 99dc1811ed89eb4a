"""Which STARS backend can drive the server behind an agent's OpenAI-compatible chat model.

STARS needs token-level control (K candidates per segment, continued from the accepted prefix),
which a chat API does not give. An OpenAI-compatible chat model pointed at a server STARS has a
backend for (`ChatOpenAI(base_url=...)`, `init_chat_model(..., base_url=...)`) can still be
driven: the same server, the same model name and API key, through that backend. Which backend is
decided by asking the server, never guessed from the URL:

- `/props` answers as llama.cpp's does: `llama-server:` (`LlamaServerBackend`: token ids, `n_cmpl`);
- otherwise `openai:` (`OpenAICompletionsBackend`, `/v1/completions`: vLLM and SGLang, or
  llama-cpp-python's server given a local `tokenizer`), kept only if one real request through
  it works (the model is served, the chat template can be rendered, completions answer).

Anything else (no base URL: OpenAI's own API; a server that cannot be reached; one that fails the
probe) raises `UndrivableModelError`, which says why and how to give STARS a backend. No silent
fallback: an agent built for one model must never be answered by another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stars_guard.errors import StarsGuardError
from stars_guard.messages import ChatMessage
from stars_guard.protocols import Backend, OpenRequest
from stars_guard.specs import server_root

HOW_TO = (
    "give STARS a backend for the model: STARSMiddleware(backend='llama-server:http://HOST:PORT') or "
    "'openai:http://HOST:PORT?model=NAME' (vLLM, SGLang), or STARSMiddleware(model=STARSChatModel(backend=...)); "
    "the embedded 135M model only when asked for by name: STARSMiddleware(backend='local')"
)


class UndrivableModelError(StarsGuardError, ValueError):
    """The agent's model is not one STARS can drive; the message says why and what to pass instead."""


@dataclass(frozen=True)
class ServerTarget:
    """What an OpenAI-compatible chat model talks to: the server, the model it asks for, its key."""

    base_url: str  # the server's root, without `/v1`
    model: str | None
    api_key: str | None = None

    def __repr__(self) -> str:  # never print the key
        return f"ServerTarget(base_url={self.base_url!r}, model={self.model!r})"


def is_openai_compatible(model: Any) -> bool:
    """Whether `model` is a langchain-openai chat model (`BaseChatOpenAI`), without importing the package."""
    return any(
        cls.__name__ == "BaseChatOpenAI" and cls.__module__.startswith("langchain_openai")
        for cls in type(model).__mro__
    )


def openai_target(model: Any) -> ServerTarget:
    """The server an OpenAI-compatible chat model talks to; `UndrivableModelError` without a base URL."""
    name = getattr(model, "model_name", None)
    base_url = getattr(model, "openai_api_base", None)
    if not base_url:
        raise UndrivableModelError(
            f"the agent's model ({type(model).__name__}, {name!r}) is OpenAI's hosted chat API, which STARS "
            f"cannot drive token by token; {HOW_TO}"
        )
    return ServerTarget(
        server_root(str(base_url)), str(name) if name else None, _api_key(getattr(model, "openai_api_key", None))
    )


def _api_key(key: Any) -> str | None:
    if key is None:
        return None
    if hasattr(key, "get_secret_value"):
        return str(key.get_secret_value()) or None
    if isinstance(key, str):
        return key or None
    if callable(key):  # langchain-openai takes a function returning the key; an async one is not usable here
        value = key()
        return value if isinstance(value, str) and value else None
    return None


def server_backend(target: ServerTarget, *, tokenizer: str | Path | Any | None = None) -> tuple[str, Backend]:
    """The spec name (`llama-server` or `openai`) and a working backend for `target` (see the module docstring)."""
    from stars_guard.adapters.llamaserver_backend import LlamaServerBackend
    from stars_guard.adapters.openai_backend import OpenAICompletionsBackend

    llama = LlamaServerBackend(target.base_url, api_key=target.api_key)
    try:
        props = llama.client.get("/props").data
    except StarsGuardError as exc:
        llama.close()
        if getattr(exc, "status_code", None) is None:
            raise UndrivableModelError(
                f"the agent's model talks to {target.base_url}, which STARS cannot reach to probe ({exc}); {HOW_TO}"
            ) from exc
        props = None
    if isinstance(props, dict) and "default_generation_settings" in props:
        return "llama-server", llama
    llama.close()
    backend = OpenAICompletionsBackend(target.base_url, model=target.model, api_key=target.api_key, tokenizer=tokenizer)
    try:
        _probe(backend)
    except StarsGuardError as exc:
        backend.close()
        hint = (
            " (a server that takes text prompts only, like llama-cpp-python's, needs the model's tokenizer: "
            "STARSMiddleware(tokenizer=<the model directory the server runs>))"
            if tokenizer is None
            else ""
        )
        raise UndrivableModelError(
            f"the server at {target.base_url} (model {target.model!r}) is neither llama-server nor a "
            f"/v1/completions server STARS can drive: {exc}{hint}; {HOW_TO}"
        ) from exc
    return "openai", backend


def _probe(backend: Backend) -> None:
    """One real request: renders a prompt, learns what the server accepts, samples one token."""
    generation = backend.open(
        OpenRequest(messages=[ChatMessage("user", "Hi")], max_new_tokens=1, temperature=1.0, top_p=1.0, seed=0)
    )
    try:
        generation.draft(1, 1)
    finally:
        generation.close()
