"""The guarded chat API in front of a real serving engine: vLLM's CPU build behind `openai:`.

Concurrent streaming requests must each come back whole and as their own answer: the engine
batches the requests' rounds together, and nothing of one request may leak into another.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from stars_guard import STARSConfig
from stars_guard.adapters import OpenAICompletionsBackend, _chat
from stars_guard.messages import as_conversation
from stars_guard.models import default_lm_dir
from stars_guard.serving.app import create_app
from tests.loopback import ThreadedServer

PROMPTS = [
    "Give me one tip for sleeping better.",
    "What is a compiler? Answer in one sentence, please, and keep it short.",
    "Name a fruit.",
    "How do I keep my houseplants alive while I am away on a two-week holiday in the mountains?",
]


def stream(url: str, prompt: str, seed: int) -> dict[str, Any]:
    body = {
        "model": "stars-guard",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 24,
        "seed": seed,
        "stream": True,
    }
    ids, pieces, finish, final = set(), [], None, {}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            assert "error" not in chunk, chunk
            ids.add(chunk["id"])
            for choice in chunk.get("choices") or []:
                pieces.append(choice["delta"].get("content") or "")
                finish = choice.get("finish_reason") or finish
            if chunk.get("usage"):
                final = chunk
    return {"ids": ids, "text": "".join(pieces), "finish": finish, "final": final}


def test_concurrent_streams_through_serve_on_vllm_come_back_whole_and_unmixed(
    vllm_server: Any,
    guard: Any,
) -> None:
    backend = OpenAICompletionsBackend(vllm_server.url, tokenizer=default_lm_dir())
    app = create_app(backend, guard, STARSConfig(max_new_tokens=24, candidates_per_round=3))
    try:
        with ThreadedServer(app) as server, ThreadPoolExecutor(len(PROMPTS)) as pool:
            answers = list(pool.map(lambda job: stream(server.url, *job), [(p, i) for i, p in enumerate(PROMPTS)]))
    finally:
        backend.close()
    tokenizer = backend.tokenizer
    stream_ids = [answer["ids"] for answer in answers]
    assert all(len(ids) == 1 for ids in stream_ids) and len(set().union(*stream_ids)) == len(PROMPTS)
    for prompt, answer in zip(PROMPTS, answers, strict=True):
        stats = answer["final"]["stars"]
        assert answer["text"].strip() and answer["finish"] in {"stop", "length"}
        assert answer["final"]["usage"]["completion_tokens"] == stats["tokens_emitted"]
        # Each answer was drafted from its own prompt: the prompt sizes differ, and each matches.
        assert stats["prompt_tokens"] == len(_chat.chat_prompt_ids(tokenizer, as_conversation(prompt)))
        assert isinstance(stats["llm_forward_tokens"], int)  # vLLM reported its cache hits throughout
