"""TransformersRewardModel on a small BERT reward model built and trained by the test (conftest.tiny_reward_dir)."""

from __future__ import annotations

import pytest
import torch

from stars_guard.adapters import TransformersRewardModel
from stars_guard.specs import build_reward

QUESTION = "How do I keep my plants alive?"


@pytest.fixture(scope="module")
def pair_model(tiny_reward_dir):
    return TransformersRewardModel(tiny_reward_dir, input_form="pair")


@pytest.fixture(scope="module")
def chat_model(tiny_reward_dir):
    return TransformersRewardModel(tiny_reward_dir)  # the tokenizer has a chat template: chat form by default


def direct_logit(model, tokenizer, **encoded) -> float:
    with torch.inference_mode():
        return float(model(**tokenizer(**encoded, return_tensors="pt")).logits[0, 0])


def test_pair_scores_are_the_heads_logit_on_the_pair_encoding(pair_model):
    answers = ["Water the plants every morning .", "You stupid idiot ."]
    scores = pair_model.score(QUESTION, answers)
    for answer, score in zip(answers, scores, strict=True):
        assert score == pytest.approx(
            direct_logit(pair_model.model, pair_model.tokenizer, text=QUESTION, text_pair=answer), abs=1e-5
        )


def test_the_trained_model_prefers_polite_answers(pair_model):
    polite = pair_model.score(QUESTION, ["I am happy to help you with your plants .", "Water them every morning ."])
    rude = pair_model.score(QUESTION, ["Shut up , you stupid moron .", "I hate you , idiot ."])
    assert min(polite) > max(rude)


def test_batch_scores_equal_one_by_one_scores(pair_model, chat_model):
    answers = ["Sure .", "Water the plants every morning and keep them in the shade .", "idiot", ""]
    for model in (pair_model, chat_model):
        batched = model.score(QUESTION, answers)
        alone = [model.score(QUESTION, [answer])[0] for answer in answers]
        assert batched == pytest.approx(alone, abs=1e-5)


def test_long_prompts_are_cut_from_the_left_and_the_answer_is_kept(pair_model, chat_model):
    tokenizer = pair_model.tokenizer
    oldest = "plants " * 120
    prompt = oldest + "how do i keep my plants alive ?"
    answer = "Water the plants every morning ."
    encoded = pair_model.encode(prompt, [answer])
    ids = encoded["input_ids"][0].tolist()
    assert len(ids) == pair_model.max_length == 64
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert ids[-len(answer_ids) - 1 : -1] == answer_ids  # the whole answer, then [SEP]
    assert tokenizer.decode(ids).count("alive") == 1  # the end of the request survived
    # The score is the score of the left-truncated prompt.
    room = 64 - tokenizer.num_special_tokens_to_add(pair=True) - len(answer_ids)
    kept = tokenizer.decode(tokenizer(prompt, add_special_tokens=False)["input_ids"][-room:])
    expected = direct_logit(pair_model.model, tokenizer, text=kept, text_pair=answer)
    assert pair_model.score(prompt, [answer])[0] == pytest.approx(expected, abs=1e-5)
    chat_ids = chat_model.encode(prompt, [answer])["input_ids"][0].tolist()
    assert len(chat_ids) <= 64
    assert tokenizer.decode(chat_ids).rstrip().endswith("assistant : Water the plants every morning .")


def test_spec_builds_it_with_options(tiny_reward_dir):
    reward = build_reward(f"hf:{tiny_reward_dir}?input_form=pair&max_length=32")
    assert reward.input_form == "pair" and reward.max_length == 32
    assert reward.name == f"hf:{tiny_reward_dir.name}"
    with pytest.raises(ValueError, match="label_index"):
        TransformersRewardModel(tiny_reward_dir, label_index=3)
