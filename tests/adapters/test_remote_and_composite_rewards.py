"""VLLMClassifyRewardModel (contract server), LLMJudgeReward (SmolLM2) and CompositeReward (real scorers).

The real vLLM pooling server is tested in `test_vllm_classify_server.py`; the contract server here
(`servers.vllm_classify_app`, after vllm-project/vllm vllm/entrypoints/pooling/classify/protocol.py
and pooling/base/protocol.py, scoring with the small BERT reward model of conftest.tiny_reward_dir)
shows what a real one cannot: the request bodies the client sent, and faults.
"""

from __future__ import annotations

import math

import pytest
import torch

from stars_guard import STARSConfig, STARSEngine
from stars_guard.adapters import CompositeReward, LLMJudgeReward, TransformersRewardModel, VLLMClassifyRewardModel
from stars_guard.errors import RewardError
from stars_guard.specs import build_reward
from tests.adapters import servers

QUESTION = "How do I keep my plants alive?"
ANSWERS = ["Water the plants every morning .", "You stupid idiot .", "I am happy to help you .", ""]


@pytest.fixture(scope="module")
def tiny(tiny_reward_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoModelForSequenceClassification.from_pretrained(tiny_reward_dir), AutoTokenizer.from_pretrained(
        tiny_reward_dir
    )


@pytest.fixture(scope="module")
def classify_server(tiny):
    model, tokenizer = tiny

    def score_texts(texts: list[str], add_special_tokens: bool) -> list[list[float]]:
        batch = tokenizer(texts, add_special_tokens=add_special_tokens, padding=True, return_tensors="pt")
        with torch.inference_mode():
            return model(**batch).logits.tolist()

    def render(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False)

    with servers.ThreadedServer(servers.vllm_classify_app(score_texts, render)) as server:
        yield server


def expected_chat_scores(tiny, answers):
    model, tokenizer = tiny
    scores = []
    for answer in answers:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}], tokenize=False
        )
        with torch.inference_mode():
            scores.append(float(model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0]))
    return scores


def test_vllm_classify_batched_with_a_local_template(classify_server, tiny, tiny_reward_dir):
    reward = VLLMClassifyRewardModel(classify_server.url + "/v1", tokenizer=tiny_reward_dir, max_batch_size=3)
    received = classify_server.server.config.app.state.received
    before = len(received)
    try:
        scores = reward.score(QUESTION, ANSWERS)
    finally:
        reward.close()
    assert scores == pytest.approx(expected_chat_scores(tiny, ANSWERS), abs=1e-5)
    requests = received[before:]
    assert [len(body["input"]) for body in requests] == [3, 1]  # split at max_batch_size
    assert all(body["use_activation"] is False and body["add_special_tokens"] is False for body in requests)


def test_vllm_classify_with_the_servers_template(classify_server, tiny):
    reward = build_reward(f"vllm-classify:{classify_server.url}")
    received = classify_server.server.config.app.state.received
    before = len(received)
    try:
        scores = reward.score(QUESTION, ANSWERS)
    finally:
        reward.close()
    assert scores == pytest.approx(expected_chat_scores(tiny, ANSWERS), abs=1e-5)
    assert len(received) - before == len(ANSWERS)  # one chat request per answer
    assert received[-1]["messages"][0] == {"role": "user", "content": QUESTION}


@pytest.fixture(scope="module")
def judge():
    return LLMJudgeReward()  # SmolLM2, the pulled default LM


def test_judge_reads_p_safe_from_the_next_token_distribution(judge):
    prompt = "How do I keep my houseplants alive while I am on holiday?"
    answers = ["Ask a neighbour to water them.", "Kill your neighbour and take his plants.", "Ok"]
    scores = judge.score(prompt, answers)
    for answer, score in zip(answers, scores, strict=True):
        ids = torch.tensor([judge.judge_ids(prompt, answer)])
        with torch.inference_mode():
            logits = judge.model(input_ids=ids).logits[:, -1, :]  # plain full forward, one text, no padding
        safe, unsafe = judge.verdict_probabilities(logits)
        assert 0.0 <= score <= 1.0
        assert score == pytest.approx(float(safe / (safe + unsafe)), abs=1e-4)


def test_judge_options_and_validation(judge):
    absolute = LLMJudgeReward(loaded=(judge.model, judge.tokenizer), normalize=False)
    value = absolute.score("Hi", ["Hello!"])[0]
    normalized = judge.score("Hi", ["Hello!"])[0]
    assert 0.0 < value < normalized <= 1.0  # raw P(safe) also leaves mass to every other token
    yes_no = LLMJudgeReward(
        loaded=(judge.model, judge.tokenizer),
        template="Request: {prompt}\nReply: {response}\nIs the reply harmless? Answer Yes or No.",
        safe_words=("Yes",),
        unsafe_words=("No",),
    )
    assert 0.0 <= yes_no.score("Hi", ["Hello!"])[0] <= 1.0
    with pytest.raises(ValueError, match="placeholders"):
        LLMJudgeReward(loaded=(judge.model, judge.tokenizer), template="no placeholders")
    with pytest.raises(ValueError, match="share a first token"):
        LLMJudgeReward(loaded=(judge.model, judge.tokenizer), safe_words=("safe",), unsafe_words=("safe",))


def test_composite_is_a_weighted_sum_with_a_veto(guard, tiny_reward_dir):
    helpful = TransformersRewardModel(tiny_reward_dir, input_form="pair")
    answers = ["Water the plants every morning .", "You stupid idiot , I hate you ."]
    safety = guard.safety(answers)
    combined = CompositeReward([(guard, 0.3), (helpful, 2.0)])
    expected = [
        0.3 * g + 2.0 * h for g, h in zip(guard.score(QUESTION, answers), helpful.score(QUESTION, answers), strict=True)
    ]
    assert combined.score(QUESTION, answers) == pytest.approx(expected)

    class GuardSafety:  # the safety half of GuardReward as its own scorer
        name = "safety"

        def score(self, prompt, responses):
            return [float(value) for value in guard.safety(responses)]

    floor = float((safety[0] + safety[1]) / 2)
    vetoed = CompositeReward([(helpful, 1.0)], veto=GuardSafety(), veto_floor=floor, vetoed_reward=-5.0)
    scores = vetoed.score(QUESTION, answers)
    assert scores[0] == pytest.approx(helpful.score(QUESTION, answers[:1])[0])
    assert scores[1] == -5.0
    assert "veto safety" in vetoed.name


def test_composite_veto_makes_the_engine_refuse(llamacpp_backend, guard):
    class RefuseEverything:
        name = "strict"

        def score(self, prompt, responses):
            return [0.0] * len(responses)

    reward = CompositeReward([(guard, 1.0)], veto=RefuseEverything(), veto_floor=0.5, vetoed_reward=-1.0)
    config = STARSConfig(seed=1, max_new_tokens=16, max_attempts=4)  # auto floor: the veto_floor, on veto scores
    result = STARSEngine(llamacpp_backend, reward, config).run("Tell me a joke.")
    assert result.stats.refused and result.text == config.refusal_message
    assert result.stats.tokens_emitted == 0


def test_composite_refuses_bad_scorers(guard):
    class Nan:
        name = "nan"

        def score(self, prompt, responses):
            return [math.nan] * len(responses)

    # Scores are checked where they enter the engine, components included: a NaN part fails the reward.
    from stars_guard.engine import checked_scores

    scores = CompositeReward([(Nan(), 1.0)]).score_components("q", ["a"])
    with pytest.raises(RewardError, match="finite"):
        checked_scores("composite", "reward", scores.reward, 1)
    vetoed_by_nan = CompositeReward([(guard, 1.0)], veto=Nan(), veto_floor=0.5).score_components("q", ["a"])
    assert vetoed_by_nan.safety is not None
    with pytest.raises(RewardError, match="finite"):
        checked_scores("composite", "safety", vetoed_by_nan.safety, 1)
    with pytest.raises(ValueError, match="together"):
        CompositeReward([(guard, 1.0)], veto=guard)
    with pytest.raises(ValueError, match="finite"):
        CompositeReward([(guard, 1.0)], veto=guard, veto_floor=0.1, vetoed_reward=-math.inf)
