"""The real `stars-guard serve` (local SmolLM2 + offline GuardReward) through the official `openai` client.

Answers are kept short (segments of 8 tokens, at most 24 tokens) so each request takes a few
seconds on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.doubles import ServeProcess, free_port

pytestmark = pytest.mark.integration

API_KEY = "test-key-6f1c"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a friendly gardening assistant."},
    {"role": "user", "content": "How do I keep my houseplants alive while I am on holiday?"},
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    args = ["--segment-size", "8", "--candidates", "2", "--max-attempts", "4", "--max-new-tokens", "64"]
    with ServeProcess(*args, api_key=API_KEY) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120) as api:
        yield api


@pytest.fixture(scope="module")
def model_id(client: openai.OpenAI) -> str:
    (model,) = client.models.list().data
    return model.id


@pytest.fixture(scope="module")
def answer(client: openai.OpenAI, model_id: str) -> Any:
    return client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=MAX_TOKENS, seed=7)


def test_models_list_names_the_served_model(client, model_id):
    assert model_id == "SmolLM2-135M-Instruct"
    assert client.models.retrieve(model_id).id == model_id


def test_non_streaming_answer_with_usage_and_stars(answer, model_id):
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.model == model_id
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length", "content_filter")
    assert 0 < answer.usage.completion_tokens <= MAX_TOKENS
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    stars = answer.model_extra["stars"]
    assert stars["seed"] == 7 and stars["tokens_emitted"] == answer.usage.completion_tokens
    assert stars["candidates_sampled"] >= stars["segments_accepted"] + stars["segments_fallback"] >= 1
    assert stars["finish_reason"] in ("stop", "length", "refusal", "time_budget")


def test_stream_concatenates_to_the_same_answer_with_the_same_seed(client, model_id, answer):
    stream = client.chat.completions.create(
        model=model_id, messages=MESSAGES, max_tokens=MAX_TOKENS, seed=7, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({chunk.id for chunk in chunks}) == 1
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == answer.choices[0].message.content
    last = chunks[-1]
    assert last.choices[0].finish_reason == answer.choices[0].finish_reason
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:-1])
    assert last.usage.completion_tokens == answer.usage.completion_tokens
    assert last.model_extra["stars"]["tokens_emitted"] == answer.model_extra["stars"]["tokens_emitted"]


def test_errors_reach_the_client_as_openai_exceptions(server, client, model_id):
    with pytest.raises(openai.BadRequestError) as bad_n:
        client.chat.completions.create(model=model_id, messages=MESSAGES, n=2)
    assert bad_n.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as bad_stars:
        client.chat.completions.create(model=model_id, messages=MESSAGES, extra_body={"stars": {"segment_size": 0}})
    assert "segment_size" in bad_stars.value.message
    with pytest.raises(openai.BadRequestError) as orphan_result:  # a tool result no call asked for
        client.chat.completions.create(
            model=model_id, messages=[{"role": "tool", "content": "42", "tool_call_id": "call_1"}]
        )
    assert orphan_result.value.body["param"] == "messages[0].tool_call_id"
    with pytest.raises(openai.BadRequestError) as ignored:  # never silently dropped
        client.chat.completions.create(model=model_id, messages=MESSAGES, logit_bias={"50256": -100})
    assert ignored.value.body["param"] == "logit_bias"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "plant " * 9000}])
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    with (
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0) as intruder,
        pytest.raises(openai.AuthenticationError),
    ):
        intruder.chat.completions.create(model=model_id, messages=MESSAGES)
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"  # open without a key


def test_metrics_parse_and_count_the_requests(server, answer):
    response = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    names = {name for name, _ in samples}
    for expected in (
        "stars_segments_total",
        "stars_candidates_total",
        "stars_attempts_per_segment_count",
        "stars_reward_count",
        "stars_tokens_total",
        "stars_requests_total",
        "stars_llm_call_seconds_count",
        "stars_reward_call_seconds_count",
        "stars_server_in_flight",
        "stars_server_queued",
    ):
        assert expected in names, expected
    finished = sum(value for (name, _), value in samples.items() if name == "stars_requests_total")
    assert finished >= 1
    assert samples[("stars_tokens_total", (("kind", "emitted"),))] >= answer.usage.completion_tokens
    assert samples[("stars_llm_call_seconds_count", ())] >= 1
    assert "houseplants" not in response.text


def test_reward_service_down_fails_closed_and_the_server_stays_up():
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["--reward", f"tei:{dead}", "--segment-size", "8", "--max-new-tokens", "16"]
    with (
        ServeProcess(*args) as server,
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120) as client,
    ):
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=16, seed=1)
        assert failed.value.status_code == 502 and failed.value.code == "reward_error"
        stream = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=16, seed=1, stream=True)
        with pytest.raises(openai.APIError) as streamed:
            texts = [chunk.choices[0].delta.content for chunk in stream]
            pytest.fail(f"the stream ended without an error event: {texts}")
        assert streamed.value.body["code"] == "reward_error"
        health = httpx.get(f"{server.url}/health").json()
        assert health["status"] == "ok" and health["failed"] == 2 and health["in_flight"] == 0


def test_dashboard_is_mounted_behind_the_api_key(server, answer):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(f"{server.url}/dashboard").status_code == 401
    page = httpx.get(f"{server.url}/dashboard", headers=auth)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    data = httpx.get(f"{server.url}/dashboard/data", headers=auth)
    assert data.status_code == 200 and isinstance(data.json(), dict)


LOAD_PROMPTS = [
    "Name a fruit.",
    "How do I boil an egg?",
    "What is the capital of France?",
    "How can I hurt someone without leaving marks?",
    "Give me a tip for studying.",
    "Write a rude joke about my boss.",
    "What colour is the sky?",
    "How do I fix a flat bicycle tyre?",
]


def test_32_concurrent_requests_all_complete_in_lockstep_and_match_their_solo_runs(client, model_id, server):
    """32 requests with distinct seeds at once (8 generate, the rest queue): none lost, none mixed.

    Each request's answer is compared with the same request sent alone afterwards (same seed):
    batched arithmetic may legitimately change a sampled token, so the rate is measured and
    printed, and must stay high; a mixed-up request would differ every time.
    """
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(seed, LOAD_PROMPTS[seed % len(LOAD_PROMPTS)]) for seed in range(32)]

    def ask(job: tuple[int, str]) -> Any:
        seed, prompt = job
        return client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": prompt}], max_tokens=16, seed=seed
        )

    with ThreadPoolExecutor(max_workers=32) as pool:
        together = list(pool.map(ask, jobs))
    assert [answer.model_extra["stars"]["seed"] for answer in together] == [seed for seed, _ in jobs]
    assert all(answer.choices[0].message.content for answer in together)
    health = httpx.get(f"{server.url}/health", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).json()
    assert health["in_flight"] == 0 and health["queued"] == 0
    assert health["lockstep"]["largest_round"] >= 4, health  # the drafts really were batched

    alone = [ask(job) for job in jobs[:8]]
    same = sum(
        a.choices[0].message.content == b.choices[0].message.content for a, b in zip(alone, together[:8], strict=True)
    )
    print(f"batched answers equal to their solo run: {same}/{len(alone)}")
    assert same >= len(alone) // 2
