"""Servers the adapter tests run on 127.0.0.1: real subprocesses, in-thread apps, and contract servers.

Contract servers stand in for engines that cannot run here (TGI, vLLM). Each follows the upstream
request/response schema named in its docstring, validates requests the way upstream does, and is
backed by a real model (llama.cpp for generation, a real sequence classifier for /classify), so
the adapters are tested against real outputs, not canned ones.

Every start waits a bounded time, every stop is bounded, and a server that fails to start raises
with the tail of its log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.loopback import REPO, ServerProcess, ThreadedServer, free_port

__all__ = ["REPO", "ServerProcess", "ThreadedServer", "free_port"]  # the loopback helpers stay importable from here


def llama_server(gguf: Path, port: int) -> ServerProcess:
    """llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`)."""
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--n_ctx", "2048", "--n_threads", "1"]
    return ServerProcess(args, port, "/v1/models")


def serve_reward(port: int, *extra: str) -> ServerProcess:
    """`stars-guard serve-reward`, through the real command line."""
    args = [sys.executable, "-m", "stars_guard.cli", "serve-reward", "--port", str(port), *extra]
    return ServerProcess(args, port, "/health", env={"TOKENIZERS_PARALLELISM": "false"})


# Generation shared by the contract servers ---------------------------------------------------------


class LlamaModel:
    """A real llama.cpp model behind the contract servers: seeded sampling, token ids, EOS."""

    def __init__(self, gguf: Path) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = llama_cpp.Llama(str(gguf), n_ctx=2048, n_threads=1, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._llama_cpp = llama_cpp
        self.bos_id = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.bos_text = self.piece(self.bos_id, special=True)
        eos_text = self.piece(int(llama_cpp.llama_vocab_eos(self.vocab)), special=True)
        self.formatter = Jinja2ChatFormatter(
            self.llm.metadata["tokenizer.chat_template"], eos_token=eos_text, bos_token=self.bos_text
        )
        self.lock = threading.Lock()

    def piece(self, token: int, special: bool = False) -> str:
        return self.llm.detokenize([token], special=special).decode("utf-8", "replace")

    def is_special(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self.vocab, token)) or self.piece(token) == ""

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.formatter(messages=messages).prompt

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def offsets(self, text: str, tokens: list[int]) -> list[tuple[int, int]]:
        """Character spans of `tokens` in `text` (special tokens render as their text)."""
        spans, cursor = [], 0
        for token in tokens:
            width = len(self.piece(token, special=True))
            spans.append((cursor, cursor + width))
            cursor += width
        return spans

    def generate(
        self, prompt: list[int], max_tokens: int, temperature: float, top_p: float, seed: int
    ) -> tuple[list[int], bool, int]:
        """(sampled ids, ended with EOS, prompt tokens reused from the previous call)."""
        with self.lock:
            previous = list(self.llm._input_ids)
            reused = 0
            for old, new in zip(previous, prompt[:-1], strict=False):
                if old != new:
                    break
                reused += 1
            self.llm.set_seed(seed)
            ids: list[int] = []
            ended = False
            for token in self.llm.generate(prompt, temp=temperature, top_p=top_p, top_k=0, min_p=0.0, reset=True):
                ids.append(int(token))
                if self._llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    ended = True
                    break
                if len(ids) >= max_tokens:
                    break
            return ids, ended, reused


def _json_error(message: str, status: int, error_type: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status)


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except json.JSONDecodeError as exc:
        raise ValueError(f"Failed to deserialize the JSON body: {exc}") from exc


# TGI ----------------------------------------------------------------------------------------------


def tgi_app(model: LlamaModel, *, adds_bos: bool = False, max_total_tokens: int = 2048) -> Starlette:
    """A TGI router, as far as stars-guard uses it.

    Schema: huggingface/text-generation-inference router/src/lib.rs (GenerateRequest,
    GenerateParameters, GenerateResponse, Details, Token, SimpleToken, ChatTokenizeResponse,
    ErrorResponse, Info) and router/src/validation.rs (422 "validation" errors: temperature > 0,
    0 < top_p < 1, max_new_tokens > 0, at most 4 stop sequences, seed only with sampling rules).
    `/generate` tokenises `inputs` with special tokens added; `adds_bos=True` emulates a
    tokenizer that prepends BOS (Llama-style), which is where a chat template's own BOS doubles.
    `received` records the token ids each /generate request was run on.
    """
    received: list[list[int]] = []

    def encode(text: str) -> tuple[list[int], list[tuple[int, int]]]:
        tokens = model.tokenize(text)
        spans = model.offsets(text, tokens)
        if adds_bos:
            tokens, spans = [model.bos_id, *tokens], [(0, 0), *spans]
        return tokens, spans

    def simple_tokens(text: str) -> list[dict[str, Any]]:
        tokens, spans = encode(text)
        return [
            {"id": token, "text": text[start:stop], "start": start, "stop": stop}
            for token, (start, stop) in zip(tokens, spans, strict=True)
        ]

    def validate(parameters: dict[str, Any]) -> str | None:
        temperature = parameters.get("temperature")
        if temperature is not None and temperature <= 0:
            return "`temperature` must be strictly positive"
        top_p = parameters.get("top_p")
        if top_p is not None and not 0.0 < top_p < 1.0:
            return "`top_p` must be > 0.0 and < 1.0"
        if parameters.get("max_new_tokens", 20) <= 0:
            return "`max_new_tokens` must be strictly positive"
        if len(parameters.get("stop") or []) > 4:
            return f"`stop` supports up to 4 stop sequences. Given: {len(parameters['stop'])}"
        return None

    async def generate(request: Request) -> Response:
        try:
            body = await _body(request)
        except ValueError as exc:
            return Response(str(exc), status_code=422)
        inputs, parameters = body.get("inputs"), body.get("parameters") or {}
        if not isinstance(inputs, str) or not inputs:
            return _json_error("`inputs` cannot be empty", 422, "validation")
        problem = validate(parameters)
        if problem:
            return _json_error(problem, 422, "validation")
        tokens, _ = encode(inputs)
        if len(tokens) + parameters.get("max_new_tokens", 20) > max_total_tokens:
            return _json_error("`inputs` tokens + `max_new_tokens` must be <= 2048", 422, "validation")
        received.append(tokens)
        sampling = bool(parameters.get("do_sample"))
        temperature = float(parameters.get("temperature", 1.0)) if sampling else 0.0
        seed = int(parameters.get("seed", 0))
        ids, ended, _ = await asyncio.to_thread(
            model.generate,
            tokens,
            parameters.get("max_new_tokens", 20),
            temperature,
            parameters.get("top_p", 1.0),
            seed,
        )
        details_tokens = [
            {"id": token, "text": model.piece(token), "logprob": 0.0, "special": model.is_special(token)}
            for token in ids
        ]
        text = "".join(item["text"] for item in details_tokens if not item["special"])
        return JSONResponse(
            {
                "generated_text": text,
                "details": {
                    "finish_reason": "eos_token" if ended else "length",
                    "generated_tokens": len(ids),
                    "seed": seed if sampling else None,
                    "prefill": [],
                    "tokens": details_tokens,
                },
            }
        )

    async def tokenize(request: Request) -> Response:
        body = await _body(request)
        return JSONResponse(simple_tokens(body["inputs"]))

    async def chat_tokenize(request: Request) -> Response:
        body = await _body(request)
        text = model.render(body["messages"])
        return JSONResponse({"tokenize_response": simple_tokens(text), "templated_text": text})

    async def info(_: Request) -> Response:
        return JSONResponse(
            {
                "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": 128,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": max_total_tokens - 1,
                "max_total_tokens": max_total_tokens,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": "3.3.7",
                "sha": None,
                "docker_label": None,
            }
        )

    app = Starlette(
        routes=[
            Route("/generate", generate, methods=["POST"]),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/chat_tokenize", chat_tokenize, methods=["POST"]),
            Route("/info", info, methods=["GET"]),
            Route("/health", lambda _: Response(status_code=200), methods=["GET"]),
        ]
    )
    app.state.received = received
    return app


# vLLM ---------------------------------------------------------------------------------------------


def vllm_completions_app(model: LlamaModel, *, max_model_len: int = 2048, name: str = "smollm2") -> Starlette:
    """vLLM's OpenAI-compatible completions, the parts with no llama.cpp-server equivalent.

    Schema: vllm-project/vllm vllm/entrypoints/openai/completion/protocol.py (CompletionRequest:
    `prompt` as token ids or text, `n`, `seed`, `return_token_ids`; CompletionResponseChoice with
    `token_ids`; UsageInfo with `prompt_tokens_details.cached_tokens`) and the tokenize protocol
    (TokenizeChatRequest with `messages` and `add_generation_prompt` -> `tokens`, `count`,
    `max_model_len`). Errors use vLLM's {"error": {"message", "type", "code"}}.
    `received` records each completion request's prompt token ids.
    """
    received: list[list[int]] = []

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}},
            status_code=status,
        )

    async def completions(request: Request) -> Response:
        body = await _body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and all(isinstance(token, int) for token in prompt):
            tokens = list(prompt)
        elif isinstance(prompt, str) and prompt:
            tokens = model.tokenize(prompt)
        else:
            return error("Either prompt or prompt_embeds must be provided and non-empty.")
        max_tokens = int(body.get("max_tokens", 16))
        if len(tokens) + max_tokens > max_model_len:
            return error(f"This model's maximum context length is {max_model_len} tokens.")
        received.append(tokens)
        n, seed = int(body.get("n", 1)), body.get("seed")
        temperature = float(body.get("temperature", 1.0))
        top_p = float(body.get("top_p", 1.0))
        choices, completion_tokens, cached = [], 0, 0
        for index in range(n):
            sample_seed = (int(seed) if seed is not None else 0) + index
            ids, ended, reused = await asyncio.to_thread(
                model.generate, tokens, max_tokens, temperature, top_p, sample_seed
            )
            cached = reused if index == 0 else cached
            completion_tokens += len(ids)
            text = "".join(model.piece(token) for token in ids if not model.is_special(token))
            choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None}
            choice["finish_reason"] = "stop" if ended else "length"
            choice["stop_reason"] = None
            if body.get("return_token_ids"):
                choice["token_ids"] = ids
                choice["prompt_token_ids"] = tokens
            choices.append(choice)
        usage = {
            "prompt_tokens": len(tokens),
            "completion_tokens": completion_tokens,
            "total_tokens": len(tokens) + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        return JSONResponse(
            {
                "id": "cmpl-test",
                "object": "text_completion",
                "created": 0,
                "model": name,
                "choices": choices,
                "usage": usage,
            }
        )

    async def tokenize(request: Request) -> Response:
        body = await _body(request)
        text = model.render(body["messages"]) if "messages" in body else body["prompt"]
        tokens = model.tokenize(text)
        return JSONResponse(
            {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens, "token_strs": None}
        )

    async def models(_: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": name, "object": "model", "owned_by": "vllm", "max_model_len": max_model_len}],
            }
        )

    app = Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", lambda _: Response(status_code=200), methods=["GET"]),
        ]
    )
    app.state.received = received
    return app


def vllm_classify_app(score_texts: Callable[[list[str], bool], list[list[float]]], render: Callable) -> Starlette:
    """vLLM's `/classify` for a reward model.

    Schema: vllm-project/vllm vllm/entrypoints/pooling/classify/protocol.py (ClassificationData:
    index, label, probs, num_classes; ClassificationResponse) and pooling/base/protocol.py
    (completion form `input` + `add_special_tokens`, chat form `messages`, `use_activation`).
    `score_texts(texts, add_special_tokens)` returns raw logits per text; `render` applies the
    model's chat template. As upstream, `add_special_tokens` defaults to true for `input` and
    to false for `messages` (the template carries the special tokens).
    `received` records each request body.
    """
    received: list[dict[str, Any]] = []

    async def classify(request: Request) -> Response:
        body = await _body(request)
        received.append(body)
        if "messages" in body:
            texts, special = [render(body["messages"])], bool(body.get("add_special_tokens", False))
        else:
            raw = body.get("input")
            texts = [raw] if isinstance(raw, str) else list(raw or [])
            special = bool(body.get("add_special_tokens", True))
        if not texts:
            return JSONResponse({"error": {"message": "empty input", "type": "BadRequestError", "code": 400}}, 400)
        logits = await asyncio.to_thread(score_texts, texts, special)
        activate = body.get("use_activation")
        data = []
        for index, row in enumerate(logits):
            probs = row if activate is False else [1 / (1 + pow(2.718281828459045, -value)) for value in row]
            data.append({"index": index, "label": "LABEL_0", "probs": probs, "num_classes": len(row)})
        usage = {"prompt_tokens": 0, "total_tokens": 0, "completion_tokens": 0, "prompt_tokens_details": None}
        return JSONResponse(
            {"id": "classify-test", "object": "list", "created": 0, "model": "rm", "data": data, "usage": usage}
        )

    app = Starlette(routes=[Route("/classify", classify, methods=["POST"])])
    app.state.received = received
    return app


# Faults -------------------------------------------------------------------------------------------


class FaultPlan:
    """Scripted answers, consumed one per request: an int status (with optional Retry-After) or 'pass'."""

    def __init__(self) -> None:
        self.steps: list[tuple[str | int, str | None]] = []
        self.after: tuple[str | int, str | None] = ("pass", None)  # once the steps run out
        self.calls = 0
        self.lock = threading.Lock()

    def script(self, *steps: str | int | tuple[int, str], then: str | int = "pass") -> None:
        with self.lock:
            self.steps = [step if isinstance(step, tuple) else (step, None) for step in steps]
            self.after = (then, None)
            self.calls = 0

    def next(self) -> tuple[str | int, str | None]:
        with self.lock:
            self.calls += 1
            return self.steps.pop(0) if self.steps else self.after


def proxy_app(upstream: str, plan: FaultPlan) -> Starlette:
    """Forwards every request to `upstream` unless the plan says to fail it (a flaky network path)."""

    async def forward(request: Request) -> Response:
        action, retry_after = plan.next()
        if action != "pass":
            headers = {"Retry-After": retry_after} if retry_after else {}
            message = {"error": f"injected failure {action}", "error_type": "overloaded"}
            return JSONResponse(message, status_code=int(action), headers=headers)
        async with httpx.AsyncClient(base_url=upstream, timeout=60) as client:
            answer = await client.request(
                request.method,
                request.url.path,
                content=await request.body(),
                headers={"content-type": "application/json"},
            )
        return Response(answer.content, status_code=answer.status_code, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])


def fault_app() -> Starlette:
    """One endpoint per failure the HTTP layer must handle; `calls` counts requests per endpoint."""
    calls: dict[str, int] = {}

    async def endpoint(request: Request) -> Response:
        name = request.path_params["name"]
        calls[name] = calls.get(name, 0) + 1
        count = calls[name]
        if name == "ok":
            return JSONResponse({"ok": True})
        if name == "flaky":
            if count == 1:
                return _json_error("Request failed during generation: CUDA out of memory", 500, "generation")
            return JSONResponse({"ok": True, "attempt": count})
        if name == "limited":
            if count == 1:
                return JSONResponse(
                    {"error": "Model is overloaded", "error_type": "overloaded"}, 429, {"Retry-After": "1"}
                )
            return JSONResponse({"ok": True, "attempt": count})
        if name == "limited-long":
            return JSONResponse(
                {"error": "Model is overloaded", "error_type": "overloaded"}, 429, {"Retry-After": "3600"}
            )
        if name == "reject":
            return _json_error("Input validation error: `temperature` must be strictly positive", 422, "validation")
        if name == "always-500":
            return _json_error("internal error", 500, "backend")
        if name == "slow":
            await asyncio.sleep(5)
            return JSONResponse({"ok": True})
        if name == "malformed":
            return Response('{"generated_text": "unterminated', status_code=200, media_type="application/json")
        return JSONResponse({"error": f"no endpoint {name}"}, 404)

    app = Starlette(routes=[Route("/{name}", endpoint, methods=["GET", "POST"])])
    app.state.calls = calls
    return app


def _slow_main(port: int) -> None:
    """A server whose only endpoint takes 30 s: killed mid-request by the fault tests."""

    async def slow(_: Request) -> Response:
        await asyncio.sleep(30)
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/slow", slow, methods=["POST"]),
            Route("/health", lambda _: Response(status_code=200), methods=["GET"]),
        ]
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["slow"])
    parser.add_argument("--port", type=int, required=True)
    _slow_main(parser.parse_args().port)
