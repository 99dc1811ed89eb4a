"""STARSChatModel's own logic on a scripted backend: conversion, parameters, chunks, events, async."""

from __future__ import annotations

import asyncio
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages import (
    ChatMessage as LCChatMessage,
)
from pydantic import ValidationError

from stars_guard.errors import InvalidMessagesError
from stars_guard.langchain.callbacks import STARS_SEGMENT_EVENT, RejectionStatsHandler
from stars_guard.langchain.chat_model import STARSChatModel, to_chat_messages
from stars_guard.messages import ChatMessage, ToolCall
from stars_guard.stats import STATS_KEYS
from stars_guard.telemetry.aggregator import DECISION_KEYS
from stars_guard.tools import OutputConstraint, ToolSpec, plain_turns, tools_instruction
from tests.doubles import CONFIG, EOS, ROUNDS, KeywordReward
from tests.doubles import SeededBackend as ScriptedBackend


def scripted_model(script: Any = ROUNDS, **fields: Any) -> STARSChatModel:
    return STARSChatModel(
        backend=ScriptedBackend(script, delay=fields.pop("delay", 0.0)), reward=KeywordReward(), config=CONFIG, **fields
    )


class Recorder(BaseCallbackHandler):
    """Records what LangChain hands to handlers: the chat run id, custom events, streamed chunks."""

    def __init__(self) -> None:
        self.chat_runs: list[UUID] = []
        self.events: list[tuple[str, dict[str, Any], UUID]] = []
        self.tokens: list[Any] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.chat_runs.append(run_id)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data, run_id))

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, **kwargs: Any) -> None:
        self.tokens.append(chunk)


class Exploding(BaseCallbackHandler):
    raise_error = True

    def on_custom_event(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("handler bug")


# Messages ----------------------------------------------------------------------------------------


def test_messages_become_engine_turns() -> None:
    turns = to_chat_messages(
        [
            SystemMessage("be brief"),
            HumanMessage("hi", name="alice"),  # names are ignored
            AIMessage(content=[{"type": "reasoning", "reasoning": "greet back"}, {"type": "text", "text": "hello"}]),
            LCChatMessage(role="developer", content="answer in French"),
            HumanMessage(content=[{"type": "text", "text": "how "}, "are you?"]),
        ]
    )
    assert turns == [
        ChatMessage("system", "be brief"),
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "hello"),
        ChatMessage("system", "answer in French"),
        ChatMessage("user", "how are you?"),
    ]


def test_tool_turns_become_structured_turns_and_render_in_the_text_format() -> None:
    call = {"name": "add", "args": {"a": 1}, "id": "c1"}
    turns = to_chat_messages(
        [
            HumanMessage("1+2?"),
            AIMessage("Adding.", tool_calls=[call, {**call, "id": "c2", "args": {"a": 2}}]),
            ToolMessage("3", tool_call_id="c1"),
            ToolMessage("4", tool_call_id="c2"),
        ]
    )
    assert turns == [
        ChatMessage("user", "1+2?"),
        ChatMessage(
            "assistant", "Adding.", tool_calls=(ToolCall("add", {"a": 1}, "c1"), ToolCall("add", {"a": 2}, "c2"))
        ),
        ChatMessage("tool", "3", tool_call_id="c1"),
        ChatMessage("tool", "4", tool_call_id="c2"),
    ]
    # For a template without tool support (and for the reward) the backend writes them as text.
    adding = OutputConstraint("tool_calls", tools=(ToolSpec("add"),))
    assert plain_turns(turns, adding) == [
        ChatMessage("system", tools_instruction(adding)),
        ChatMessage("user", "1+2?"),
        ChatMessage(
            "assistant",
            'Adding.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n'
            '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>',
        ),
        ChatMessage("user", "<tool_response>\n3\n</tool_response>\n<tool_response>\n4\n</tool_response>"),
    ]
    with_system = plain_turns(to_chat_messages([SystemMessage("be brief"), HumanMessage("hi")]), adding)
    assert with_system[0] == ChatMessage("system", "be brief\n\n" + tools_instruction(adding))
    assert plain_turns(with_system[1:], None) == [ChatMessage("user", "hi")]  # nothing to add without tools


def test_a_lone_surrogate_in_a_tool_calls_arguments_is_refused_up_front() -> None:
    call = {"name": "add", "args": {"a": "\ud800"}, "id": "c1"}
    with pytest.raises(InvalidMessagesError, match="message 1 tool call arguments is not valid Unicode"):
        to_chat_messages([HumanMessage("1+2?"), AIMessage("", tool_calls=[call]), ToolMessage("3", tool_call_id="c1")])


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([HumanMessage("hi"), FunctionMessage("42", name="f")], "'function' message"),
        ([HumanMessage(content=[{"type": "image", "url": "https://x/y.png"}])], "'image' content block"),
        ([HumanMessage("hi"), AIMessage("hello")], "last message must come from the user"),
        ([LCChatMessage(role="critic", content="meh")], "'critic' message"),
        ([], "no messages"),
    ],
)
def test_unsupported_messages_are_refused_with_a_reason(messages: list[Any], match: str) -> None:
    with pytest.raises(InvalidMessagesError, match=match):
        to_chat_messages(messages)


# Parameters --------------------------------------------------------------------------------------


def test_fields_and_call_kwargs_map_onto_the_config() -> None:
    llm = scripted_model(max_tokens=40, temperature=0.3, timeout=12.5, seed=9, stop=["\n"])
    call = llm._prepare([HumanMessage("hi")], None, {})
    config = call.engine.config
    assert (config.max_new_tokens, config.temperature, config.time_budget_s, config.seed) == (40, 0.3, 12.5, 9)
    assert config.segment_size == CONFIG.segment_size  # the rest comes from `config`
    assert call.stop == ["\n"]
    call = llm._prepare(
        [HumanMessage("hi")], ["END"], {"max_tokens": 8, "timeout": 1.0, "seed": 4, "segment_size": 4, "stream": True}
    )
    config = call.engine.config
    assert (config.max_new_tokens, config.time_budget_s, config.seed, config.segment_size) == (8, 1.0, 4, 4)
    assert call.stop == ["END"]  # a call's stop replaces the instance's, as in other chat models


def test_unknown_kwargs_and_other_models_are_refused() -> None:
    llm = scripted_model()
    with pytest.raises(TypeError, match="max_new_token"):
        llm.invoke("hi", max_new_token=5)
    with pytest.raises(ValueError, match="cannot switch models per call"):
        llm.invoke("hi", model="gpt-4o")
    assert llm.invoke("hi", model="scripted-lm").content == "Hello, world!"  # its own name is fine


def test_bad_values_fail_at_construction_and_name_the_field() -> None:
    with pytest.raises(ValidationError, match="temperature"):
        STARSChatModel(backend=ScriptedBackend(ROUNDS), reward=KeywordReward(), temperature=-1)
    with pytest.raises(ValidationError, match="max_new_tokens"):
        STARSChatModel(backend=ScriptedBackend(ROUNDS), reward=KeywordReward(), max_tokens=0)


def test_model_name_and_tracing_params() -> None:
    llm = scripted_model(max_tokens=30, stop=["x"])
    assert llm.model == "scripted-lm"
    assert STARSChatModel().model == "SmolLM2-135M-Instruct"  # known without loading anything
    assert STARSChatModel(model="guarded-smol").model == "guarded-smol"
    params = llm._get_ls_params()
    assert params == {
        "ls_provider": "stars_guard",
        "ls_model_name": "scripted-lm",
        "ls_model_type": "chat",
        "ls_temperature": CONFIG.temperature,
        "ls_max_tokens": 30,
        "ls_stop": ["x"],
    }
    assert llm._get_ls_params(model="other", temperature=0.0)["ls_model_name"] == "other"


def test_temperature_zero_drafts_one_candidate_per_segment() -> None:
    backend = ScriptedBackend([["BAD-0001", "ignored"], ["fine<eos>"]])
    llm = STARSChatModel(backend=backend, reward=KeywordReward(), config=CONFIG, temperature=0)
    message = llm.invoke("hi")
    assert backend.opened[0]["temperature"] == 0.0
    assert backend.generations[0].requested == [1, 1]
    # Each single greedy candidate was still scored: both failed (the answer holds BAD), so each
    # segment fell back to its only candidate.
    assert message.content == "BAD-0001fine"
    stars = message.response_metadata["stars"]
    assert (stars["candidates_sampled"], stars["segments_accepted"], stars["segments_fallback"]) == (2, 0, 2)


def test_seed_is_drawn_per_call_unless_given() -> None:
    backend = ScriptedBackend(lambda seed: [[f"s{seed}{EOS}"]])
    config = CONFIG.model_copy(update={"segment_size": 16})
    llm = STARSChatModel(backend=backend, reward=KeywordReward(), config=config)
    first, second = llm.invoke("hi"), llm.invoke("hi")
    seeds = [opened["seed"] for opened in backend.opened]
    assert seeds[0] != seeds[1]
    assert [first.response_metadata["seed"], second.response_metadata["seed"]] == seeds
    assert first.content == f"s{seeds[0]}"
    assert llm.invoke("hi", seed=77).response_metadata["seed"] == backend.opened[-1]["seed"] == 77
    fixed = STARSChatModel(backend=backend, reward=KeywordReward(), config=config, seed=5)
    assert fixed.invoke("hi").content == fixed.invoke("hi").content == "s5"


# Answers and chunks ------------------------------------------------------------------------------


def test_invoke_reports_text_usage_and_statistics() -> None:
    assert "stars_segments" not in scripted_model().invoke("hi").response_metadata  # only on request
    message = scripted_model(include_segments=True).invoke("hi")
    assert message.content == "Hello, world!"
    metadata = message.response_metadata
    assert metadata["model_name"] == "scripted-lm"
    assert metadata["finish_reason"] == metadata["stars_finish_reason"] == "stop"
    assert list(metadata["stars"]) == list(STATS_KEYS)
    stars = metadata["stars"]
    assert (stars["segments_accepted"], stars["candidates_sampled"], stars["candidates_rejected"]) == (2, 5, 3)
    assert [(d["segment_index"], d["attempt"], d["accepted"]) for d in metadata["stars_segments"]] == [
        (0, 1, False),
        (0, 2, True),
        (1, 1, False),
        (1, 2, False),
        (1, 3, True),
    ]
    assert all(set(d) == set(DECISION_KEYS) for d in metadata["stars_segments"])  # never any text
    # output_tokens: every token sampled (LangChain's sum of all output token types), the rejected
    # ones itemised; the answer's own tokens are the emitted ones.
    assert (stars["tokens_sampled"], stars["tokens_emitted"]) == (38, 13)
    assert message.usage_metadata == {
        "input_tokens": 7,
        "output_tokens": 38,
        "total_tokens": 45,
        "output_token_details": {"stars_rejected": 25},
    }


def test_stream_yields_accepted_segments_then_a_last_chunk_with_the_totals() -> None:
    llm = scripted_model(include_segments=True)
    chunks = list(llm.stream("hi", seed=1))
    assert [chunk.content for chunk in chunks] == ["Hello, ", "world!", ""]
    assert [chunk.chunk_position for chunk in chunks] == [None, None, "last"]
    assert [("model_name" in c.response_metadata) for c in chunks] == [True, False, False]
    # Everything else is set on the last chunk only, so both ways LangChain merges chunks agree.
    for key in ("stars", "stars_segments", "finish_reason", "seed"):
        assert [(key in c.response_metadata) for c in chunks] == [False, False, True]
    assert [c.usage_metadata is not None for c in chunks] == [False, False, True]
    assert not any("BAD" in str(chunk.content) for chunk in chunks)


def merged(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def without_timing(metadata: dict[str, Any]) -> dict[str, Any]:
    return {**metadata, "stars": {**metadata["stars"], "elapsed_s": None}}


def test_merged_stream_equals_invoke() -> None:
    llm = scripted_model()
    invoked = llm.invoke("hi", seed=3)
    streamed = merged(list(llm.stream("hi", seed=3)))
    assert streamed.content == invoked.content
    assert streamed.usage_metadata == invoked.usage_metadata
    assert without_timing(streamed.response_metadata) == without_timing(invoked.response_metadata)


async def test_async_paths_match_the_sync_ones() -> None:
    llm = scripted_model()
    invoked = llm.invoke("hi", seed=3)
    ainvoked = await llm.ainvoke("hi", seed=3)
    astreamed = merged([chunk async for chunk in llm.astream("hi", seed=3)])
    for message in (ainvoked, astreamed):
        assert message.content == invoked.content
        assert message.usage_metadata == invoked.usage_metadata
        assert without_timing(message.response_metadata) == without_timing(invoked.response_metadata)
    batch = await llm.abatch(["hi", "hello"], seed=3)
    assert [m.content for m in batch] == ["Hello, world!"] * 2
    assert [m.content for m in llm.batch(["hi", "hello"])] == ["Hello, world!"] * 2


def test_refusal_and_fallback_are_reported() -> None:
    config = CONFIG.model_copy(update={"max_attempts": 2, "safety_floor": 0.2})
    refused = STARSChatModel(backend=ScriptedBackend([["BAD-1", "BAD-2"]]), reward=KeywordReward(), config=config)
    message = refused.invoke("hi")
    assert message.content == config.refusal_message
    assert message.response_metadata["finish_reason"] == "content_filter"  # OpenAI's word for a refusal
    assert message.response_metadata["stars_finish_reason"] == "refusal"
    assert message.response_metadata["stars"]["refused"] is True
    config = CONFIG.model_copy(update={"max_attempts": 2})
    fallback = STARSChatModel(
        backend=ScriptedBackend([["BAD-1", "BAD-2"], [f"ok{EOS}"]]), reward=KeywordReward(), config=config
    )
    decisions = fallback.invoke("hi", include_segments=True).response_metadata["stars_segments"]
    assert [(d["attempt"], d["accepted"], d["fallback"]) for d in decisions[:3]] == [
        (1, False, False),
        (2, False, False),
        (1, False, True),
    ]


# Callback events ---------------------------------------------------------------------------------


def test_segment_events_are_dispatched_under_the_chat_model_run() -> None:
    recorder = Recorder()
    scripted_model().invoke("hi", config={"callbacks": [recorder]})
    assert len(recorder.chat_runs) == 1
    assert [name for name, _, _ in recorder.events] == [STARS_SEGMENT_EVENT] * 5
    assert {run_id for _, _, run_id in recorder.events} == set(recorder.chat_runs)
    assert all(set(data) == set(DECISION_KEYS) for _, data, _ in recorder.events)


def test_candidate_text_only_on_opt_in_and_only_in_events() -> None:
    recorder = Recorder()
    llm = scripted_model(include_candidate_text=True)
    stream = llm.stream_events("hi", version="v3", config={"callbacks": [recorder]})
    deltas = [event["delta"]["text"] for event in stream if event["event"] == "content-block-delta"]
    texts = [data["text"] for _, data, _ in recorder.events]
    assert texts == ["BAD-0001", "Hello, ", "BAD-0002", "BAD-0003", "world!"]
    assert deltas == ["Hello, ", "world!"]
    message = stream.output
    assert message.text == "Hello, world!"
    assert "BAD" not in str(message.response_metadata)
    assert "stars_segments" not in message.response_metadata


async def test_async_v3_event_stream_dispatches_events_too() -> None:
    recorder = Recorder()
    llm = scripted_model(include_candidate_text=True).bind(seed=4)
    stream = await llm.astream_events("hi", version="v3", config={"callbacks": [recorder]})
    deltas = [event["delta"]["text"] async for event in stream if event["event"] == "content-block-delta"]
    assert deltas == ["Hello, ", "world!"]
    assert [data["text"] for _, data, _ in recorder.events] == ["BAD-0001", "Hello, ", "BAD-0002", "BAD-0003", "world!"]
    assert {run_id for _, _, run_id in recorder.events} == set(recorder.chat_runs)
    assert (await stream.output).response_metadata["seed"] == 4


@pytest.mark.parametrize("streaming", [False, True])
def test_streaming_paths_carry_decisions_on_chunks_instead_of_events(streaming: bool) -> None:
    recorder = Recorder()
    # An explicit streaming=False would make LangChain's stream() fall back to invoke().
    llm = scripted_model(streaming=True, include_segments=True) if streaming else scripted_model(include_segments=True)
    if streaming:  # invoke() through _stream: LangChain passes no run manager there either
        final = llm.invoke("hi", config={"callbacks": [recorder]})
    else:
        final = merged(list(llm.stream("hi", config={"callbacks": [recorder]})))
    assert recorder.events == []
    carried = [decision for chunk in recorder.tokens for decision in chunk.stars_segments]
    assert [len(chunk.stars_segments) for chunk in recorder.tokens] == [2, 3, 0]
    assert carried == final.response_metadata["stars_segments"]
    assert all(set(decision) == set(DECISION_KEYS) for decision in carried)


def test_a_failing_handler_does_not_fail_the_call() -> None:
    stats = RejectionStatsHandler()
    message = scripted_model().invoke("hi", config={"callbacks": [Exploding(), stats]})
    assert message.content == "Hello, world!"
    snapshot = stats.snapshot()
    assert snapshot["candidates"] == {"judged": 5, "rejected": 3}  # the other handlers still get every event
    assert snapshot["segments"]["accepted"] == 2


async def test_a_failing_handler_does_not_fail_an_async_call() -> None:
    stats = RejectionStatsHandler()
    message = await scripted_model().ainvoke("hi", config={"callbacks": [Exploding(), stats]})
    assert message.content == "Hello, world!"
    assert stats.snapshot()["candidates"] == {"judged": 5, "rejected": 3}


# Async behaviour ---------------------------------------------------------------------------------


async def test_ainvoke_runs_the_engine_off_the_event_loop() -> None:
    llm = scripted_model([["BAD-1", "a, "], ["b, "], ["c, "], [f"d{EOS}"]], delay=0.15)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    message = await llm.ainvoke("hi")
    elapsed = time.perf_counter() - started
    task.cancel()
    assert message.content == "a, b, c, d"
    assert elapsed >= 0.6  # four drafting calls of 0.15 s each ran...
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert max(gaps) < 0.1  # ...while the loop kept ticking every 10 ms


async def test_generations_do_not_occupy_the_loops_default_executor() -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))  # LangChain's sync callbacks run here
    llm = scripted_model([["a, "], ["b, "], [f"c{EOS}"]], delay=0.2)
    answers = asyncio.gather(llm.ainvoke("hi"), llm.ainvoke("hi"))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await loop.run_in_executor(None, time.sleep, 0)
    assert time.perf_counter() - started < 0.15  # not queued behind a 0.6 s generation
    assert [m.content for m in await answers] == ["a, b, c"] * 2


async def test_leaving_astream_early_stops_the_engine() -> None:
    rounds = [[f"seg{i:02d}, "] for i in range(40)]
    backend = ScriptedBackend(rounds, delay=0.02)
    llm = STARSChatModel(
        backend=backend, reward=KeywordReward(), config=CONFIG.model_copy(update={"max_new_tokens": 400})
    )
    stream = llm.astream("hi")
    first = await anext(stream)
    await stream.aclose()
    assert first.content == "seg00, "
    generation = backend.generations[0]
    deadline = time.perf_counter() + 2
    while not generation.closed and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    assert generation.closed
    assert generation.llm_calls < 40


# One loop for all four entry points --------------------------------------------------------------


def layout(chunks: list[Any]) -> list[tuple[Any, ...]]:
    """What a chunk sequence shows a consumer, timing aside: text, position, metadata keys, usage."""
    return [
        (chunk.content, chunk.chunk_position, sorted(chunk.response_metadata), chunk.usage_metadata) for chunk in chunks
    ]


async def test_stream_and_astream_emit_the_same_chunks_and_decisions() -> None:
    llm = scripted_model()
    sync_recorder, async_recorder = Recorder(), Recorder()
    streamed = list(llm.stream("hi", seed=5, config={"callbacks": [sync_recorder]}))
    astreamed = [chunk async for chunk in llm.astream("hi", seed=5, config={"callbacks": [async_recorder]})]
    assert layout(astreamed) == layout(streamed)
    assert [c.stars_segments for c in async_recorder.tokens] == [c.stars_segments for c in sync_recorder.tokens]
    assert sync_recorder.events == async_recorder.events == []


async def test_invoke_and_ainvoke_dispatch_the_same_events() -> None:
    llm = scripted_model(include_candidate_text=True)
    sync_recorder, async_recorder = Recorder(), Recorder()
    invoked = llm.invoke("hi", seed=5, config={"callbacks": [sync_recorder]})
    ainvoked = await llm.ainvoke("hi", seed=5, config={"callbacks": [async_recorder]})
    assert [data for _, data, _ in async_recorder.events] == [data for _, data, _ in sync_recorder.events]
    assert len(sync_recorder.events) == 5
    assert without_timing(ainvoked.response_metadata) == without_timing(invoked.response_metadata)
    assert sync_recorder.tokens == async_recorder.tokens == []  # no chunks reach handlers from invoke


def test_leaving_stream_early_closes_the_generation() -> None:
    backend = ScriptedBackend([[f"seg{i:02d}, "] for i in range(40)])
    llm = STARSChatModel(
        backend=backend, reward=KeywordReward(), config=CONFIG.model_copy(update={"max_new_tokens": 400})
    )
    stream = llm.stream("hi")
    assert next(stream).content == "seg00, "
    stream.close()
    generation = backend.generations[0]
    assert generation.closed
    assert generation.llm_calls < 40


class FailingBackend:
    """A scripted backend whose generations draft once, then fail: every entry point must raise it
    and still close the generation."""

    model_name = "failing-lm"

    def __init__(self) -> None:
        self.inner = ScriptedBackend([["first, "], ["never drafted"]])
        self.generations: list[Any] = []

    def open(self, *args: Any, **kwargs: Any) -> Any:
        generation = self.inner.open(*args, **kwargs)
        draft = generation.draft

        def draft_once(*draft_args: Any, **draft_kwargs: Any) -> Any:
            if generation.llm_calls >= 1:
                raise RuntimeError("backend down")
            return draft(*draft_args, **draft_kwargs)

        generation.draft = draft_once
        self.generations.append(generation)
        return generation


async def test_a_backend_failure_surfaces_on_every_entry_point_and_closes_the_generation() -> None:
    backend = FailingBackend()
    llm = STARSChatModel(backend=backend, reward=KeywordReward(), config=CONFIG)
    with pytest.raises(RuntimeError, match="backend down"):
        llm.invoke("hi")
    with pytest.raises(RuntimeError, match="backend down"):
        list(llm.stream("hi"))
    with pytest.raises(RuntimeError, match="backend down"):
        await llm.ainvoke("hi")
    with pytest.raises(RuntimeError, match="backend down"):
        [chunk async for chunk in llm.astream("hi")]
    assert len(backend.generations) == 4
    deadline = time.perf_counter() + 2
    while not all(g.closed for g in backend.generations) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    assert [g.closed for g in backend.generations] == [True] * 4
