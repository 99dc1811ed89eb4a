"""LlamaCppBackend in process on the SmolLM2 GGUF: exact continuation, KV reuse, honest accounting."""

from __future__ import annotations

import pytest

from stars_guard import ContextWindowExceededError, STARSConfig, STARSEngine
from stars_guard.adapters._numpy_sampling import entropy as _entropy
from stars_guard.adapters._numpy_sampling import incomplete_utf8_tail as _incomplete_utf8_tail
from stars_guard.adapters.llamacpp_backend import LlamaCppGeneration
from stars_guard.messages import normalize_messages
from stars_guard.protocols import OpenRequest

PROMPT = normalize_messages("Give me three tips for keeping houseplants alive.")


def open_generation(backend, temperature=0.0, seed=1, prompt=PROMPT):
    return backend.open(OpenRequest(prompt, max_new_tokens=128, temperature=temperature, top_p=0.95, seed=seed))


def fresh_greedy(backend, prompt_ids: list[int], tokens: int) -> tuple[int, ...]:
    """Greedy tokens after `prompt_ids`, computed from scratch in a new context (no reuse at all)."""
    context = backend._acquire()
    try:
        generation = LlamaCppGeneration(backend, context, prompt_ids, 0.0, 1.0, 0)
        return generation.draft(1, tokens)[0].token_ids
    finally:
        backend._release(context)


def test_greedy_draft_matches_llama_cpp_own_generation(llamacpp_backend, gguf):
    import llama_cpp

    generation = open_generation(llamacpp_backend)
    try:
        ours = generation.draft(1, 16)[0]
    finally:
        generation.close()
    reference = llama_cpp.Llama(str(gguf), n_ctx=512, n_threads=1, verbose=False)
    theirs = []
    try:
        for token in reference.generate(generation.prompt_ids, temp=0.0, top_k=1):
            theirs.append(int(token))
            if len(theirs) == len(ours.token_ids) or reference.token_eos() == token:
                break
    finally:
        reference.close()
    assert list(ours.token_ids) == theirs
    assert ours.text == llamacpp_backend.llm.detokenize(theirs).decode("utf-8").removesuffix("<|im_end|>")


def test_committed_candidate_continues_exactly_as_a_fresh_recomputation(llamacpp_backend):
    generation = open_generation(llamacpp_backend, temperature=1.0, seed=3)
    try:
        candidates = generation.draft(4, 8)
        usable = [c for c in candidates if c.finish_reason == "length"]
        assert len(usable) >= 2, "sampling at temperature 1 should give several unfinished drafts"
        chosen = usable[0] if usable[0] is not candidates[-1] else usable[1]  # not the last-decoded row
        generation.commit(chosen)
        prefix = generation.prompt_ids + generation.response_ids
        assert generation.response_ids == list(chosen.token_ids)
        generation._temperature = 0.0  # continue greedily: deterministic, comparable
        continued = generation.draft(1, 8)[0].token_ids
    finally:
        generation.close()
    assert continued == fresh_greedy(llamacpp_backend, prefix, 8)


def test_retained_candidate_survives_another_round_and_commits_without_recompute(llamacpp_backend):
    generation = open_generation(llamacpp_backend, temperature=1.0, seed=11)
    try:
        first = [c for c in generation.draft(3, 6) if c.finish_reason == "length"]
        assert first
        kept = first[-1]
        generation.retain(kept)
        generation.draft(3, 6)  # a second round overwrites the candidate sequences
        forward_before = generation.llm_forward_tokens
        generation.commit(kept)  # the retained one, from the earlier round
        assert generation.llm_forward_tokens == forward_before, "committing must not recompute anything"
        prefix = generation.prompt_ids + generation.response_ids
        generation._temperature = 0.0
        continued = generation.draft(1, 8)[0].token_ids
    finally:
        generation.close()
    assert prefix[-len(kept.token_ids) :] == list(kept.token_ids)
    assert continued == fresh_greedy(llamacpp_backend, prefix, 8)


def test_forward_tokens_count_prefill_and_every_evaluated_token_once(llamacpp_backend):
    generation = open_generation(llamacpp_backend, temperature=1.0, seed=5)
    try:
        assert generation.llm_forward_tokens == generation.prompt_tokens
        candidates = generation.draft(4, 10)
        evaluated = sum(c.num_tokens - (1 if c.finish_reason == "eos" else 0) for c in candidates)
        assert generation.llm_forward_tokens == generation.prompt_tokens + evaluated
        assert generation.llm_calls == 1
        for candidate in candidates:
            assert candidate.num_tokens <= 10
            assert list(candidate.token_ends) == sorted(candidate.token_ends)
            if candidate.token_ends:
                assert candidate.token_ends[-1] == len(candidate.text)
    finally:
        generation.close()


def test_eos_candidate_cannot_be_committed_and_unknown_candidates_are_refused(llamacpp_backend):
    prompt = normalize_messages("Reply with just the word yes.")
    generation = llamacpp_backend.open(OpenRequest(prompt, max_new_tokens=64, temperature=0.0, top_p=1.0, seed=0))
    try:
        candidate = generation.draft(1, 32)[0]
        assert candidate.finish_reason == "eos", candidate
        assert llamacpp_backend.is_end(candidate.token_ids[-1])
        with pytest.raises(ValueError, match="EOS"):
            generation.commit(candidate)
        other = open_generation(llamacpp_backend)
        try:
            with pytest.raises(ValueError, match="latest draft"):
                generation.commit(other.draft(1, 2)[0])
        finally:
            other.close()
    finally:
        generation.close()
    with pytest.raises(RuntimeError, match="closed"):
        generation.draft(1, 4)


def test_concurrent_generations_use_separate_kv_caches(llamacpp_backend):
    first, second = (
        open_generation(llamacpp_backend),
        open_generation(llamacpp_backend, prompt=normalize_messages("Name a colour.")),
    )
    try:
        interleaved = [first.draft(1, 6)[0].token_ids, second.draft(1, 6)[0].token_ids]
        assert first._context is not second._context
    finally:
        first.close()
        second.close()
    alone = open_generation(llamacpp_backend)
    try:
        assert alone.draft(1, 6)[0].token_ids == interleaved[0]
    finally:
        alone.close()


def test_context_window_is_checked_before_any_work(llamacpp_backend):
    long_prompt = normalize_messages("plants " * 9000)
    with pytest.raises(ContextWindowExceededError, match="context window"):
        llamacpp_backend.open(OpenRequest(long_prompt, max_new_tokens=64, temperature=0.8, top_p=0.95, seed=0))


def test_text_of_characters_split_across_tokens_and_segments(llamacpp_backend):
    text = "Plants 🌿🌵 grow well: naïve café ☕"
    ids = list(llamacpp_backend.llm.tokenize(text.encode(), add_bos=False, special=False))
    pieces = [llamacpp_backend.piece(token) for token in ids]
    split = next(i for i in range(1, len(ids)) if _incomplete_utf8_tail(b"".join(pieces[:i])))
    generation = open_generation(llamacpp_backend)
    try:
        head = generation._candidate(ids[:split], False)
        generation.response_ids = ids[:split]
        tail = generation._candidate(ids[split:], False)
    finally:
        generation.close()
    assert "\ufffd" not in head.text + tail.text
    assert head.text + tail.text == text
    assert tail.token_ends[-1] == len(tail.text)


def test_stars_run_end_to_end_with_statistics_that_add_up(llamacpp_backend, guard):
    engine = STARSEngine(llamacpp_backend, guard, STARSConfig(seed=7, max_new_tokens=32))
    result = engine.run("How do I keep my houseplants alive while I am on holiday?")
    stats = result.stats
    assert result.text.strip()
    assert 0 < stats.tokens_emitted <= 32
    assert stats.llm_calls >= 2 and stats.reward_calls == stats.llm_calls
    assert stats.prompt_tokens < stats.llm_forward_tokens <= stats.prompt_tokens + stats.tokens_sampled
    assert stats.backend_retries == 0
    assert result.model_name == "SmolLM2-135M-Instruct.Q4_1"
    again = engine.run("How do I keep my houseplants alive while I am on holiday?")
    assert again.text == result.text, "same seed, same answer"


def next_token_entropy(backend, prefix: list[int]) -> float:
    """Entropy of the next-token distribution after `prefix`, from a fresh context."""
    context = backend._acquire()
    try:
        generation = LlamaCppGeneration(backend, context, prefix, 0.0, 1.0, 0)
        return float(_entropy(generation._next_logits[None, :])[0])
    finally:
        backend._release(context)


def test_entropy_cut_ends_segments_before_an_uncertain_token(llamacpp_backend):
    generation = open_generation(llamacpp_backend, temperature=0.8, seed=9)
    cut = 2.0
    try:
        candidates = generation.draft(3, 10, entropy_cut=cut)
        prompt = list(generation.prompt_ids)
        cut_short = [c for c in candidates if c.finish_reason == "length" and c.num_tokens < 10]
        assert cut_short, "with a 2-nat cut some segment should end early"
        chosen = cut_short[0]
        entropies = [
            next_token_entropy(llamacpp_backend, prompt + list(chosen.token_ids[:n]))
            for n in range(1, chosen.num_tokens + 1)
        ]
        assert entropies[-1] >= cut and all(value < cut for value in entropies[:-1]), entropies
        generation.commit(chosen)  # an entropy-cut candidate commits like any other
        prefix = generation.prompt_ids + generation.response_ids
        generation._temperature = 0.0
        continued = generation.draft(1, 6)[0].token_ids
    finally:
        generation.close()
    assert continued == fresh_greedy(llamacpp_backend, prefix, 6)


@pytest.fixture(scope="module")
def transformers_backend():
    from stars_guard.adapters import TransformersBackend

    return TransformersBackend()


def test_default_model_is_an_f16_copy_written_once_and_close_to_the_transformers_weights(
    gguf, tmp_path, monkeypatch, transformers_backend
):
    """The F16 default is the same model: its logits sit near transformers' fp32 ones (closer than Q4_1's)."""
    import numpy as np
    import torch

    from stars_guard.models import HOME_ENV, default_lm_gguf, ensure_llamacpp_gguf, llamacpp_lm_gguf

    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    default_lm_gguf().parent.mkdir(parents=True)
    default_lm_gguf().symlink_to(gguf)
    notes: list[str] = []
    written = ensure_llamacpp_gguf(notes.append)
    assert written == llamacpp_lm_gguf() and written.is_file() and len(notes) == 1
    assert ensure_llamacpp_gguf(notes.append) == written and len(notes) == 1  # once only

    import llama_cpp

    ids = transformers_backend.encode_chat(PROMPT)
    with torch.inference_mode():
        reference = transformers_backend.model(torch.tensor([ids])).logits[0].float().numpy()
    gaps = {}
    for name, path in (("f16", written), ("q4_1", gguf)):
        llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
        try:
            llm.eval(ids)
            gaps[name] = float(np.abs(np.asarray(llm.scores[: len(ids)]) - reference).max(axis=1).mean())
        finally:
            llm.close()
    assert gaps["f16"] < 0.1 and gaps["f16"] * 5 < gaps["q4_1"], gaps


@pytest.mark.integration
def test_the_backend_runs_the_f16_copy_by_default():
    from stars_guard.adapters import LlamaCppBackend
    from stars_guard.models import llamacpp_lm_gguf

    backend = LlamaCppBackend()
    assert backend.model_path == llamacpp_lm_gguf()
    generation = backend.open(OpenRequest(PROMPT, max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0))
    try:
        assert generation.draft(1, 4)[0].text.strip()
    finally:
        generation.close()
