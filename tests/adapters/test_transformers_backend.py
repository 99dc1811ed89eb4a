"""TransformersBackend on the real SmolLM2-135M-Instruct: exact continuation, no recomputation."""

from __future__ import annotations

import torch

from stars_guard import STARSConfig, STARSEngine
from stars_guard.errors import ContextWindowExceededError, ModelNotFoundError
from stars_guard.messages import normalize_messages
from stars_guard.protocols import OpenRequest

PROMPT = "Give me three tips for writing clear emails."


def open_generation(backend, seed=0, temperature=0.8, max_new_tokens=64):
    return backend.open(
        OpenRequest(
            normalize_messages(PROMPT), max_new_tokens=max_new_tokens, temperature=temperature, top_p=0.95, seed=seed
        )
    )


def test_cached_logits_equal_a_from_scratch_forward(backend):
    generation = open_generation(backend, seed=11)
    for pick in (2, 0, 3):
        candidates = generation.draft(4, 8)
        survivors = [c for c in candidates if c.finish_reason == "length"]
        generation.commit(survivors[pick % len(survivors)])
    ids = torch.tensor([generation.token_ids])
    with torch.inference_mode():
        scratch = backend.model(input_ids=ids, use_cache=False).logits[:, -1, :].float()
    cached = generation.next_token_logits()
    assert cached.shape == scratch.shape
    assert torch.max(torch.abs(cached - scratch)).item() < 1e-4


def test_retained_candidate_commits_without_recomputation(backend):
    generation = open_generation(backend, seed=5)
    first = generation.draft(3, 6)
    keep = next(c for c in first if c.finish_reason == "length")
    generation.retain(keep)
    generation.draft(3, 6)  # a later round that loses to the retained one
    before = generation.llm_forward_tokens
    generation.commit(keep)
    assert generation.llm_forward_tokens == before
    assert generation.response_ids == list(keep.token_ids)
    ids = torch.tensor([generation.token_ids])
    with torch.inference_mode():
        scratch = backend.model(input_ids=ids, use_cache=False).logits[:, -1, :].float()
    assert torch.max(torch.abs(generation.next_token_logits() - scratch)).item() < 1e-4


def test_candidate_text_and_token_offsets_are_consistent(backend):
    generation = open_generation(backend, seed=2)
    for candidate in generation.draft(4, 12):
        assert len(candidate.token_ends) == candidate.text_tokens
        assert list(candidate.token_ends) == sorted(candidate.token_ends)
        assert not candidate.token_ends or candidate.token_ends[-1] == len(candidate.text)
        decoded = backend.tokenizer.decode(candidate.token_ids, skip_special_tokens=True)
        assert decoded.strip() == candidate.text.strip()


def test_same_seed_same_text_and_no_recomputation(backend, guard):
    engine = STARSEngine(backend, guard, STARSConfig(max_new_tokens=32))
    first = engine.run(PROMPT, seed=21)
    second = engine.run(PROMPT, seed=21)
    other = engine.run(PROMPT, seed=22)
    assert first.text == second.text and first.text
    assert first.stats.as_dict()["tokens_sampled"] == second.stats.as_dict()["tokens_sampled"]
    assert other.text != first.text
    for result in (first, other):
        stats = result.stats
        assert stats.llm_forward_tokens == stats.prompt_tokens + stats.tokens_sampled


def test_tokens_emitted_counts_the_answer_tokens(backend, guard):
    opened = []

    class Recording:
        model_name = backend.model_name

        def open(self, request):
            opened.append(backend.open(request))
            return opened[-1]

    result = STARSEngine(Recording(), guard, STARSConfig(max_new_tokens=40)).run(PROMPT, seed=4)
    generation = opened[0]
    committed = len(generation.response_ids)
    # Every emitted token was committed, except a final segment that ended on EOS or a stop (not continued).
    assert result.stats.tokens_emitted >= committed
    assert result.stats.tokens_emitted - committed <= 16
    assert result.text.startswith(backend.tokenizer.decode(generation.response_ids, skip_special_tokens=True))


def test_stop_string_ends_the_answer_on_the_real_model(backend, guard):
    result = STARSEngine(backend, guard, STARSConfig(max_new_tokens=48)).run(PROMPT, seed=3, stop=["."])
    assert "." not in result.text
    assert result.finish_reason in {"stop", "length"}


def test_greedy_is_deterministic_and_drafts_one_candidate(backend, guard):
    engine = STARSEngine(backend, guard, STARSConfig(max_new_tokens=24, temperature=0.0))
    first, second = engine.run(PROMPT), engine.run(PROMPT)
    assert first.text == second.text
    assert first.stats.tokens_sampled == first.stats.tokens_emitted + (first.finish_reason == "stop")


def test_prompt_over_the_context_window_is_rejected_clearly(backend):
    long_prompt = "word " * (backend.context_window + 10)
    try:
        backend.open(
            OpenRequest(normalize_messages(long_prompt), max_new_tokens=16, temperature=0.8, top_p=0.95, seed=0)
        )
    except ContextWindowExceededError as error:
        assert error.context_window == backend.context_window
        assert "shorten the prompt" in str(error)
    else:
        raise AssertionError("a prompt longer than the context window was accepted")


def test_missing_default_model_says_to_pull(tmp_path, monkeypatch):
    from stars_guard.adapters import TransformersBackend

    monkeypatch.setenv("STARS_GUARD_HOME", str(tmp_path))
    try:
        TransformersBackend()
    except ModelNotFoundError as error:
        assert "stars-guard models pull" in str(error)
    else:
        raise AssertionError("no error without model files")


def test_missing_model_path_is_a_clear_error():
    from stars_guard.specs import build_backend

    try:
        build_backend("hf:/nonexistent/model-dir")
    except ModelNotFoundError as error:
        assert "/nonexistent/model-dir" in str(error)
    else:
        raise AssertionError("a missing model directory loaded")


def test_entropy_segments_end_at_uncertain_tokens_and_continue_exactly(backend, guard):
    generation = open_generation(backend, seed=8)
    candidates = generation.draft(4, 16, entropy_cut=1.5)
    lengths = [c.num_tokens for c in candidates]
    assert min(lengths) < 16, f"no candidate was cut at an entropy boundary: {lengths}"
    cut = next(c for c in candidates if c.finish_reason == "length" and c.num_tokens < 16)
    generation.commit(cut)
    ids = torch.tensor([generation.token_ids])
    with torch.inference_mode():
        scratch = backend.model(input_ids=ids, use_cache=False).logits[:, -1, :].float()
    assert torch.max(torch.abs(generation.next_token_logits() - scratch)).item() < 1e-4
    result = STARSEngine(backend, guard, STARSConfig(max_new_tokens=32, segmentation="entropy")).run(PROMPT, seed=1)
    stats = result.stats
    assert stats.llm_forward_tokens == stats.prompt_tokens + stats.tokens_sampled
    assert stats.segments_accepted + stats.segments_fallback >= 2
