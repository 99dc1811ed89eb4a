"""STARSChatModel on the real embedded default (SmolLM2-135M-Instruct + GuardReward), end to end."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import defaultdict
from typing import Any
from uuid import UUID

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from prometheus_client.parser import text_string_to_metric_families

from stars_guard.config import STARSConfig
from stars_guard.langchain.callbacks import RejectionStatsHandler
from stars_guard.langchain.chat_model import STARSChatModel
from stars_guard.protocols import RewardScores, RewardWrapper
from stars_guard.telemetry import PrometheusExporter
from tests.langchain.conftest import red_team_prompts
from tests.langchain.test_chat_model_unit import Exploding, Recorder, merged, without_timing

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("default_components")]


def same_answer(first: AIMessage | AIMessageChunk, second: AIMessage | AIMessageChunk) -> None:
    assert first.content == second.content
    assert first.usage_metadata == second.usage_metadata
    assert without_timing(first.response_metadata) == without_timing(second.response_metadata)


async def test_streamed_text_equals_invoked_text_for_the_same_seed() -> None:
    llm = STARSChatModel(max_tokens=24)
    prompt = "Give me one tip for keeping houseplants alive."
    invoked = llm.invoke(prompt, seed=11)
    chunks = list(llm.stream(prompt, seed=11))
    assert len(chunks) >= 2 and chunks[-1].chunk_position == "last"
    same_answer(merged(chunks), invoked)
    same_answer(merged([chunk async for chunk in llm.astream(prompt, seed=11)]), invoked)
    same_answer(await llm.ainvoke(prompt, seed=11), invoked)
    stars, usage = invoked.response_metadata["stars"], invoked.usage_metadata
    assert usage["output_tokens"] == stars["tokens_sampled"] >= stars["tokens_emitted"] > 0  # every token sampled
    assert usage["output_token_details"]["stars_rejected"] == stars["tokens_sampled"] - stars["tokens_emitted"]


def test_temperature_zero_is_greedy_and_still_judged() -> None:
    llm = STARSChatModel(max_tokens=20, temperature=0)
    first, second = llm.invoke("Name a primary colour.", seed=1), llm.invoke("Name a primary colour.", seed=2)
    assert first.content == second.content  # greedy: the seed does not matter
    stars = first.response_metadata["stars"]
    settled = stars["segments_accepted"] + stars["segments_fallback"]
    assert stars["candidates_sampled"] == settled >= 1  # one candidate per segment, each judged


def settled_texts(events: list[dict[str, Any]]) -> list[str]:
    """Texts of the candidates that entered the answer, segment by segment."""
    by_segment: dict[int, str] = {}
    for event in events:
        if event["accepted"] or event["fallback"]:
            by_segment[event["segment_index"]] = event["text"]
    return [by_segment[index] for index in sorted(by_segment)]


@pytest.mark.parametrize("selection", ["first", "best"])
def test_red_team_prompts_never_stream_rejected_text(selection: str) -> None:
    """Both judging orders. Index order ('first') rejects often on these prompts; best-first (the
    default) rejects a round only when its best candidate fails, so it may have nothing to check."""
    prompts = red_team_prompts(3)
    llm = STARSChatModel(max_tokens=32, include_candidate_text=True, config=STARSConfig(round_selection=selection))
    checked = 0
    for number, prompt in enumerate(prompts):
        recorder = Recorder()
        stream = llm.stream_events(prompt, version="v3", seed=number, config={"callbacks": [recorder]})
        deltas = [event["delta"]["text"] for event in stream if event["event"] == "content-block-delta"]
        answer = stream.output.text
        events = [data for _, data, _ in recorder.events]
        assert "".join(deltas) == answer
        # The answer is exactly its settled candidates (then the refusal, if the floor vetoed).
        settled = "".join(settled_texts(events))
        refusal = llm.config.refusal_message
        assert answer in (settled, settled + refusal, settled + " " + refusal)
        for event in events:
            text = event["text"]
            if event["accepted"] or event["fallback"] or len(text.strip()) < 12 or text in settled:
                continue
            checked += 1
            assert all(text not in delta for delta in deltas)
            assert text not in answer
        if number == 0:  # plain stream() with the same seed streams the very same chunks
            chunks = [chunk.content for chunk in llm.stream(prompt, seed=number)]
            assert [chunk for chunk in chunks if chunk] == deltas
    if selection == "first":
        assert checked > 0, "no rejected candidate was long enough to check: the test checked nothing"


class PoisonedReward(RewardWrapper):
    """The real default reward, except that its second call answers `poison` for every text
    (a scorer or service returning NaN or inf)."""

    def __init__(self, inner: Any, poison: float) -> None:
        super().__init__(inner)
        self.poison = poison
        self.calls = 0
        self.poisoned: list[str] = []

    def score_components(self, conversation: Any, responses: Any) -> RewardScores:
        self.calls += 1
        scores = super().score_components(conversation, responses)
        if self.calls != 2:
            return scores
        self.poisoned = list(responses)
        return RewardScores([self.poison] * len(responses), scores.components)


@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_red_team_prompts_never_stream_text_a_non_finite_score_let_through(poison: float, default_components) -> None:
    """Bypass 1 of the trust issue: a NaN or inf score is a reward failure (fail-closed), not a pass."""
    _, reward = default_components
    for number, prompt in enumerate(red_team_prompts(2)):
        poisoned = PoisonedReward(reward, poison)
        llm = STARSChatModel(
            reward=poisoned,
            max_tokens=32,
            config=STARSConfig(round_selection="first", reward_error_action="refuse", segment_budget="flat"),
        )
        chunks = list(llm.stream(prompt, seed=number))
        answer = "".join(chunk.content for chunk in chunks)
        stars = merged(chunks).response_metadata["stars"]
        assert poisoned.calls >= 2 and stars["reward_errors"] == 1
        assert stars["refused"] and stars["refusal_reason"] == "reward_error"
        settled = answer.removesuffix(llm.config.refusal_message).rstrip(" ")
        assert all(
            not (response.startswith(settled) and answer.startswith(response)) or response == settled
            for response in poisoned.poisoned
        )


async def test_concurrent_ainvokes_are_counted_exactly_and_keep_the_loop_free() -> None:
    exporter = PrometheusExporter()
    stats = RejectionStatsHandler(observers=[exporter])
    recorder = Recorder()
    llm = STARSChatModel(max_tokens=16, include_candidate_text=False, include_segments=True)
    prompts = ["Say hello to a new colleague.", "Suggest a name for a cat."]
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.02)

    task = asyncio.create_task(ticker())
    config = {"callbacks": [Exploding(), recorder, stats]}  # a failing handler fails nothing
    answers = await asyncio.gather(
        *(llm.ainvoke(prompts[seed % 2], seed=seed, config=config) for seed in range(100, 108))
    )
    task.cancel()
    assert all(answer.content for answer in answers)
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 1.0  # the loop never waited on the model

    # Nothing mixed: each run's events are exactly its own answer's decisions.
    events: dict[UUID, list[dict[str, Any]]] = defaultdict(list)
    for _, data, run_id in recorder.events:
        events[run_id].append(data)
    for answer in answers:
        run_id = UUID(answer.id.removeprefix("lc_run--")[:36])
        assert events[run_id] == answer.response_metadata["stars_segments"]

    # Nothing lost: handler totals equal the sum of the per-response statistics.
    totals = [answer.response_metadata["stars"] for answer in answers]
    snapshot = stats.snapshot()
    assert snapshot["requests"]["finished"] == 8 and snapshot["requests"]["in_flight"] == 0
    assert snapshot["candidates"] == {
        "judged": sum(s["candidates_sampled"] for s in totals),
        "rejected": sum(s["candidates_rejected"] for s in totals),
    }
    assert snapshot["segments"]["accepted"] == sum(s["segments_accepted"] for s in totals)
    assert snapshot["segments"]["fallback"] == sum(s["segments_fallback"] for s in totals)
    assert snapshot["tokens"]["sampled"] == sum(s["tokens_sampled"] for s in totals)
    recent = {entry["run_id"]: entry for entry in snapshot["recent"]}
    for answer in answers:
        entry = recent[answer.id.removeprefix("lc_run--")[:36]]
        assert entry["candidates_sampled"] == answer.response_metadata["stars"]["candidates_sampled"]
        assert entry["decisions"] == len(answer.response_metadata["stars_segments"])

    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exporter.render().decode())
        for sample in family.samples
    }
    assert values[("stars_candidates_total", ())] == snapshot["candidates"]["judged"]
    assert values[("stars_segments_total", (("outcome", "rejected"),))] == snapshot["candidates"]["rejected"]
    requests = {
        dict(labels)["outcome"]: value for (name, labels), value in values.items() if name == "stars_requests_total"
    }
    assert requests == snapshot["requests"]["by_outcome"]
    assert sum(requests.values()) == 8


def test_token_counting_uses_the_models_own_tokenizer(default_components: tuple[Any, Any]) -> None:
    backend, _ = default_components
    llm = STARSChatModel()
    text = "Guarded decoding, one segment at a time."
    assert llm.get_token_ids(text) == backend.tokenizer.encode(text, add_special_tokens=False)
    assert llm.get_num_tokens(text) == len(llm.get_token_ids(text))
