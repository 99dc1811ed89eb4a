"""Lockstep batching on the real model: batched requests keep their own prompts and seeds.

Batched arithmetic (left padding, masks, a bigger matrix product) may change a logit in its last
bits and so, rarely, a sampled token. The test measures how often a batched answer differs from
the same request run alone, and checks that every batched answer is as likely under its own
prompt as the solo one: an answer continued from another request's cache would not be.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from stars_guard import STARSConfig
from stars_guard.engine import STARSEngine
from stars_guard.messages import normalize_messages
from stars_guard.serving.lockstep import LockstepBackend
from tests.shared_data import hh_prompts

CONFIG = STARSConfig(max_new_tokens=32, segment_size=16, candidates_per_round=4)


def _mean_logprob(backend, prompt: str, answer: str) -> float:
    """Mean log-probability per answer token of `answer` after `prompt`, from scratch."""
    prompt_ids = backend.encode_chat(normalize_messages(prompt))
    answer_ids = backend.tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        return 0.0
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.inference_mode():
        logits, _ = backend.forward(ids, None, last_only=False)
    log_probs = torch.log_softmax(logits[0, len(prompt_ids) - 1 : -1].float(), dim=-1)
    return float(log_probs.gather(-1, torch.tensor(answer_ids).view(-1, 1)).mean())


def test_batched_answers_match_their_solo_runs(backend, guard):
    prompts = hh_prompts(4)
    solo_engine = STARSEngine(backend, guard, CONFIG)
    solo = [solo_engine.run(prompt, seed=index) for index, prompt in enumerate(prompts)]

    lockstep = LockstepBackend(backend)
    engine = STARSEngine(lockstep, guard, CONFIG)
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        batched = list(pool.map(lambda item: engine.run(item[1], seed=item[0]), enumerate(prompts)))
    lockstep.close()

    assert lockstep.stats.largest_round == len(prompts), lockstep.stats
    assert lockstep.stats.mean_round >= 2, lockstep.stats
    identical = sum(a.text == b.text for a, b in zip(solo, batched, strict=True))
    assert identical >= len(prompts) // 2, [(a.text, b.text) for a, b in zip(solo, batched, strict=True)]
    for prompt, alone, together in zip(prompts, solo, batched, strict=True):
        # HH prompts include harmful requests: one the guard vetoes alone is vetoed in a batch too.
        assert together.stats.tokens_emitted > 0 or (together.stats.refused and alone.stats.refused)
        if alone.text != together.text:
            assert _mean_logprob(backend, prompt, together.text) >= _mean_logprob(backend, prompt, alone.text) - 1.0
        # Exact continuation holds in a batch too: every sampled token was forwarded once.
        assert together.stats.llm_forward_tokens == together.stats.prompt_tokens + together.stats.tokens_sampled


def test_batched_prefill_gives_each_prompt_its_own_solo_state(backend):
    from stars_guard.messages import ChatMessage
    from stars_guard.protocols import OpenRequest

    prompts = ["Hi", *hh_prompts(2)]
    requests = [OpenRequest(normalize_messages(p), 32, 0.8, 0.95, index) for index, p in enumerate(prompts)]
    requests.append(OpenRequest([ChatMessage("user", "word " * 9000)], 32, 0.8, 0.95, 9))  # over the context
    opened = backend.open_batch(requests)
    assert isinstance(opened[-1], Exception) and "context" in str(opened[-1]).lower()
    for request, generation in zip(requests[:3], opened[:3], strict=True):
        alone = backend.open(request)
        assert generation.token_ids == alone.token_ids
        assert torch.allclose(generation.next_token_logits(), alone.next_token_logits(), atol=1e-3)
        assert generation.llm_forward_tokens == alone.llm_forward_tokens == alone.prompt_tokens
        # The padded rows were dropped: drafting continues exactly as from a solo prefill.
        assert [c.token_ids for c in generation.draft(2, 8)] == [c.token_ids for c in alone.draft(2, 8)]
