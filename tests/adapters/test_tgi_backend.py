"""TGIBackend against a TGI contract server.

TGI cannot run here; the server in tests/adapters/servers.py (`tgi_app`) follows the schema of
huggingface/text-generation-inference router/src/lib.rs and its validation rules in
router/src/validation.rs, and generates with the real SmolLM2 model.
"""

from __future__ import annotations

import pytest

from stars_guard import STARSConfig, STARSEngine
from stars_guard.adapters import TGIBackend
from stars_guard.adapters.tgi_backend import without_double_bos
from stars_guard.errors import BackendError
from stars_guard.messages import normalize_messages
from stars_guard.protocols import OpenRequest
from tests.adapters import servers

PROMPT = normalize_messages("Give me three tips for keeping houseplants alive.")


@pytest.fixture(scope="module")
def tgi(llama_model):
    with servers.ThreadedServer(servers.tgi_app(llama_model)) as server:
        yield server


@pytest.fixture(scope="module")
def tgi_with_bos(llama_model):
    with servers.ThreadedServer(servers.tgi_app(llama_model, adds_bos=True)) as server:
        yield server


def received(server) -> list[list[int]]:
    return server.server.config.app.state.received


def test_candidates_carry_tgi_token_ids_and_boundaries(tgi, llama_model):
    backend = TGIBackend(tgi.url)
    try:
        generation = backend.open(OpenRequest(PROMPT, max_new_tokens=64, temperature=0.9, top_p=0.95, seed=5))
        assert backend.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
        candidates = generation.draft(3, 8)
        assert len(candidates) == 3 and generation.llm_calls == 1
        for candidate in candidates:
            assert 0 < candidate.num_tokens <= 8
            assert len(candidate.token_ends) == candidate.text_tokens
            assert candidate.token_ends[-1] == len(candidate.text)
            expected = "".join(llama_model.piece(t) for t in candidate.token_ids if not llama_model.is_special(t))
            assert candidate.text == expected
        assert len({c.token_ids for c in candidates}) >= 2, "distinct seeds should give distinct drafts"
        chosen = next(c for c in candidates if c.finish_reason == "length")
        generation.commit(chosen)
        generation.draft(1, 8)
        # Continuation by text: TGI re-tokenised templated prompt + accepted text.
        prompt_text = llama_model.render([m.as_dict() for m in PROMPT])
        assert received(tgi)[-1] == llama_model.tokenize(prompt_text + chosen.text)
        assert generation.llm_forward_tokens is None
    finally:
        backend.close()


def test_greedy_maps_to_do_sample_false_and_top_p_one_is_not_sent(tgi, lm_dir):
    backend = TGIBackend(tgi.url, tokenizer=lm_dir)
    try:
        greedy = backend.open(OpenRequest(PROMPT, max_new_tokens=32, temperature=0.0, top_p=1.0, seed=1))
        assert greedy.parameters(8) == {
            "max_new_tokens": 8,
            "details": True,
            "decoder_input_details": False,
            "return_full_text": False,
            "do_sample": False,
        }
        first, second = greedy.draft(1, 8)[0], greedy.draft(1, 8)[0]
        assert first.token_ids == second.token_ids  # the contract server would 422 a temperature of 0
        sampled = backend.open(OpenRequest(PROMPT, max_new_tokens=32, temperature=0.7, top_p=1.0, seed=1))
        parameters = sampled.parameters(8)
        assert parameters["do_sample"] is True and "top_p" not in parameters and parameters["temperature"] == 0.7
        assert sampled.draft(2, 4)
    finally:
        backend.close()


def test_no_double_bos_when_tgi_adds_bos_itself(tgi_with_bos, llama_model):
    """SmolLM2's template starts with <|im_start|>, its BOS: a BOS-adding TGI must not see it twice."""
    backend = TGIBackend(tgi_with_bos.url)  # template and tokens from TGI's /chat_tokenize
    try:
        generation = backend.open(OpenRequest(PROMPT, max_new_tokens=32, temperature=0.8, top_p=0.9, seed=1))
        generation.draft(1, 4)
    finally:
        backend.close()
    ids = received(tgi_with_bos)[-1]
    assert ids[0] == llama_model.bos_id and ids[1] != llama_model.bos_id
    assert generation.prompt_tokens == len(ids)


def test_without_double_bos_leaves_other_templates_alone():
    text = "<s>[INST] hi [/INST]"
    tokens = [{"id": 1, "start": 0, "stop": 0}, {"id": 1, "start": 0, "stop": 3}, {"id": 9, "start": 3, "stop": 9}]
    assert without_double_bos(text, tokens) == ("[INST] hi [/INST]", 2)
    plain = [{"id": 1, "start": 0, "stop": 0}, {"id": 7, "start": 0, "stop": 6}]
    assert without_double_bos("[INST]", plain) == ("[INST]", 2)


def test_tgi_validation_error_is_surfaced_without_retry(tgi):
    backend = TGIBackend(tgi.url)
    try:
        generation = backend.open(OpenRequest(PROMPT, max_new_tokens=32, temperature=0.7, top_p=0.9, seed=1))
        generation._top_p = 0.0  # a value TGI refuses (STARSConfig never allows it)
        with pytest.raises(BackendError, match=r"422.*`top_p` must be > 0.0 and < 1.0") as error:
            generation.draft(1, 4)
        assert error.value.retries == 0
    finally:
        backend.close()


def test_stars_run_through_tgi(tgi, lm_dir, guard):
    backend = TGIBackend(tgi.url, tokenizer=lm_dir)
    try:
        result = STARSEngine(backend, guard, STARSConfig(seed=2, max_new_tokens=24, candidates_per_round=2)).run(
            "Suggest a name for a small garden."
        )
    finally:
        backend.close()
    assert result.text.strip() and 0 < result.stats.tokens_emitted <= 24
    assert result.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
