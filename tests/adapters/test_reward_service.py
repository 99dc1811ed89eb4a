"""`stars-guard serve-reward` (real CLI, real GuardReward) and TEIRewardModel speaking TEI's /predict to it."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import httpx
import pytest

from stars_guard import STARSConfig, STARSEngine
from stars_guard.adapters import TEIRewardModel
from stars_guard.serving.reward_server import create_app, parse_inputs
from stars_guard.specs import build_reward
from tests.adapters import servers

PROMPT = "How do I keep my houseplants alive while I am on holiday?"
ANSWERS = [
    "Ask a neighbour to water them, or use self-watering spikes.",
    "Group the plants together in a cool room away from direct sun.",
    "You stupid idiot, I hate your plants.",
    "",
    "Soak the pots in a tray of water before you leave.",
    "Move them out of the sun and water them well the day before.",
]


def test_tei_client_gets_the_same_scores_as_the_scorer_in_process(reward_service, guard):
    model = TEIRewardModel(reward_service.url)
    try:
        remote = model.score(PROMPT, ANSWERS)
    finally:
        model.close()
    local = guard.score(PROMPT, ANSWERS)
    assert remote == pytest.approx(local, abs=1e-6)
    assert model.max_batch_size == 4  # read from /info: six answers went in two requests
    assert remote[2] < min(remote[0], remote[1])  # the insult scores lowest


def test_tei_schema_info_health_and_errors(reward_service):
    with httpx.Client(base_url=reward_service.url, timeout=30) as client:
        assert client.get("/health").status_code == 200
        info = client.get("/info").json()
        assert info["max_client_batch_size"] == 4 and info["model_id"] == "guard"
        assert info["model_type"] == {"reranker": {"id2label": {"0": "reward"}, "label2id": {"reward": 0}}}
        single = client.post("/predict", json={"inputs": [PROMPT, ANSWERS[0]], "raw_scores": True}).json()
        assert isinstance(single, list) and single[0]["label"] == "reward"
        batch = client.post("/predict", json={"inputs": [[PROMPT, ANSWERS[0]], ["just a text"]], "raw_scores": True})
        assert [len(row) for row in batch.json()] == [1, 1]
        assert batch.json()[0][0]["score"] == pytest.approx(single[0]["score"])
        squashed = client.post("/predict", json={"inputs": [PROMPT, ANSWERS[0]]}).json()[0]["score"]
        assert squashed == pytest.approx(1 / (1 + math.exp(-single[0]["score"])))
        too_many = client.post("/predict", json={"inputs": [[PROMPT, a] for a in ANSWERS]})
        assert too_many.status_code == 413
        assert too_many.json() == {"error": "batch size 6 > maximum allowed batch size 4", "error_type": "validation"}
        empty = client.post("/predict", json={"inputs": []})
        assert empty.status_code == 400 and empty.json()["error_type"] == "empty"
        malformed = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert malformed.status_code == 422


def test_concurrent_requests_are_batched_into_fewer_scorer_calls():
    calls: list[tuple[str, int]] = []

    class SlowScorer:
        name = "slow"

        def score(self, prompt, responses):
            calls.append((prompt, len(responses)))
            time.sleep(0.3)  # while it works, the other requests queue up
            return [float(len(text)) for text in responses]

    app = create_app(SlowScorer(), max_wait_ms=20)
    with servers.ThreadedServer(app) as server:
        results: dict[int, list[float]] = {}

        def request(index: int) -> None:
            prompt = "p1" if index % 2 else "p2"
            body = {"inputs": [[prompt, "x" * index], [prompt, "y" * (index + 1)]], "raw_scores": True}
            answer = httpx.post(server.url + "/predict", json=body, timeout=30).json()
            results[index] = [row[0]["score"] for row in answer]

        threads = [threading.Thread(target=request, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        stats = app.state.batcher.stats
    assert results == {i: [float(i), float(i + 1)] for i in range(8)}
    assert stats.requests == 8 and stats.texts == 16
    assert stats.scorer_calls < 8, stats  # batched: one call per prompt per batch, not one per request
    assert stats.largest_batch > 2


def test_scorer_failure_is_a_424_with_its_message():
    class Broken:
        name = "broken"

        def score(self, prompt, responses):
            raise RuntimeError("model weights are corrupt")

    with servers.ThreadedServer(create_app(Broken())) as server:
        answer = httpx.post(server.url + "/predict", json={"inputs": ["q", "a"]}, timeout=10)
    assert answer.status_code == 424
    assert "model weights are corrupt" in answer.json()["error"]


def test_parse_inputs_follows_tei_predict_input():
    assert parse_inputs("text") == ([("", "text")], False)
    assert parse_inputs(["q", "a"]) == ([("q", "a")], False)
    assert parse_inputs([["q", "a"], ["t"]]) == ([("q", "a"), ("", "t")], True)
    with pytest.raises(ValueError, match="pair of strings"):
        parse_inputs([["a", "b", "c"]])


def test_stars_with_the_reward_service_as_its_reward(reward_service, llamacpp_backend):
    reward = build_reward(f"tei:{reward_service.url}")
    try:
        result = STARSEngine(llamacpp_backend, reward, STARSConfig(seed=5, max_new_tokens=24)).run(PROMPT)
    finally:
        reward.close()
    assert result.text.strip() and result.stats.reward_errors == 0
    assert result.stats.mean_accepted_reward is not None


def test_batcher_stops_cleanly():
    class Echo:
        name = "echo"

        def score(self, prompt, responses):
            return [1.0] * len(responses)

    async def scenario():
        from stars_guard.serving.reward_server import RewardBatcher

        batcher = RewardBatcher(Echo())
        await batcher.start()
        assert await batcher.score([("q", "a"), ("q", "b")]) == [1.0, 1.0]
        await asyncio.wait_for(batcher.stop(), timeout=5)

    asyncio.run(scenario())
