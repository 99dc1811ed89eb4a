"""OpenAICompletionsBackend end to end: a real llama.cpp server (text mode) and a vLLM contract server (token ids)."""

from __future__ import annotations

import pytest

from stars_guard import ContextWindowExceededError, STARSConfig, STARSEngine
from stars_guard.adapters import OpenAICompletionsBackend
from stars_guard.messages import normalize_messages
from stars_guard.protocols import OpenRequest
from stars_guard.specs import build_backend
from tests.adapters import servers

PROMPT = normalize_messages("Give me three tips for keeping houseplants alive.")


@pytest.fixture(scope="module")
def llama_backend(llama_cpp_python_server, lm_dir):
    backend = OpenAICompletionsBackend(llama_cpp_python_server.url + "/v1", tokenizer=lm_dir)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def vllm_server(llama_model):
    with servers.ThreadedServer(servers.vllm_completions_app(llama_model)) as server:
        yield server


def test_probe_finds_text_prompts_and_no_n_on_llama_cpp_server(llama_backend):
    generation = llama_backend.open(OpenRequest(PROMPT, max_new_tokens=64, temperature=0.8, top_p=0.95, seed=1))
    generation.close()
    assert llama_backend.features.token_prompts is False  # llama-cpp-python's `prompt` takes strings only
    assert llama_backend.features.n_choices is False  # it ignores `n`
    assert llama_backend.model_name.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_greedy_segment_equals_the_same_model_in_process(llama_backend, llamacpp_backend):
    remote = llama_backend.open(OpenRequest(PROMPT, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=1))
    local = llamacpp_backend.open(OpenRequest(PROMPT, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=1))
    try:
        assert remote.prompt_tokens == local.prompt_tokens
        over_http, in_process = remote.draft(1, 12)[0], local.draft(1, 12)[0]
    finally:
        remote.close()
        local.close()
    assert over_http.text == in_process.text
    assert over_http.finish_reason == in_process.finish_reason


def test_k_candidates_are_concurrent_requests_with_distinct_seeds(llama_backend):
    generation = llama_backend.open(OpenRequest(PROMPT, max_new_tokens=64, temperature=1.2, top_p=1.0, seed=4))
    try:
        candidates = generation.draft(3, 8)
        assert len(candidates) == 3 and generation.llm_calls == 1
        assert len({c.text for c in candidates}) >= 2, [c.text for c in candidates]
        for candidate in candidates:
            assert candidate.text and candidate.token_ends[-1] == len(candidate.text)
        unfinished = next(c for c in candidates if c.finish_reason == "length")
        generation.commit(unfinished)
        assert generation.response_text == unfinished.text
        follow = generation.draft(1, 8)[0]
        assert follow.text  # the server continued the accepted text
        assert generation.llm_forward_tokens is None  # llama.cpp server does not report its cache hits
        assert generation.backend_retries == 0
    finally:
        generation.close()


def test_stars_run_through_the_llama_cpp_server(llama_cpp_python_server, lm_dir, guard):
    backend = build_backend(f"openai:{llama_cpp_python_server.url}/v1?tokenizer={lm_dir}")
    try:
        result = STARSEngine(backend, guard, STARSConfig(seed=3, max_new_tokens=24, candidates_per_round=2)).run(
            "What is a good name for a cat?"
        )
    finally:
        backend.close()
    assert result.text.strip()
    assert 0 < result.stats.tokens_emitted <= 24
    assert result.stats.llm_forward_tokens is None
    assert result.stats.backend_retries == 0


def test_token_id_prompts_give_exact_continuation_on_vllm(vllm_server, llama_model):
    """vLLM-style server: the probe finds token prompts and `n`; the prompt is exactly prompt + accepted ids."""
    backend = OpenAICompletionsBackend(vllm_server.url)  # no local tokenizer: vLLM's /tokenize renders the chat
    received = vllm_server.server.config.app.state.received
    try:
        generation = backend.open(OpenRequest(PROMPT, max_new_tokens=64, temperature=0.9, top_p=0.95, seed=2))
        assert backend.features.token_prompts and backend.features.n_choices
        assert generation.prompt_ids == llama_model.tokenize(llama_model.render([m.as_dict() for m in PROMPT]))
        before = len(received)
        candidates = generation.draft(3, 6)
        assert len(received) == before + 1, "n=3 candidates must come from one request"
        chosen = next(c for c in candidates if c.finish_reason == "length")
        generation.commit(chosen)
        generation.draft(2, 6)
        assert received[-1] == generation.prompt_ids + list(chosen.token_ids)
        # vLLM reports prefix-cache hits, so the computed positions are known.
        assert isinstance(generation.llm_forward_tokens, int) and generation.llm_forward_tokens > 0
        generation.close()
        with pytest.raises(ContextWindowExceededError):
            backend.open(OpenRequest(PROMPT, max_new_tokens=4000, temperature=0.9, top_p=0.95, seed=2))
    finally:
        backend.close()
    assert backend.model_name == "smollm2"


def test_text_only_server_without_tokenizer_is_a_clear_error(llama_cpp_python_server):
    backend = OpenAICompletionsBackend(llama_cpp_python_server.url)
    try:
        with pytest.raises(Exception, match="tokenizer="):
            backend.open(OpenRequest(PROMPT, max_new_tokens=16, temperature=0.8, top_p=0.95, seed=1))
    finally:
        backend.close()
