"""RejectionStatsHandler and its pure aggregation, on a scripted backend."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from stars_guard.langchain.callbacks import RejectionStatsHandler
from stars_guard.langchain.chat_model import STARSChatModel
from stars_guard.telemetry.aggregator import RejectionStats, RunInfo
from tests.doubles import CONFIG, EOS, ROUNDS, KeywordReward
from tests.doubles import SeededBackend as ScriptedBackend


def model(script: Any = ROUNDS, include_segments: bool = True, **config: Any) -> STARSChatModel:
    return STARSChatModel(
        backend=ScriptedBackend(script),
        reward=KeywordReward(),
        config=CONFIG.model_copy(update=config),
        include_segments=include_segments,
    )


def decision(segment: int, attempt: int, reward: float, accepted: bool, fallback: bool = False) -> dict[str, Any]:
    return {
        "segment_index": segment,
        "attempt": attempt,
        "reward": reward,
        "threshold": 0.5,
        "accepted": accepted,
        "fallback": fallback,
        "tokens": 8,
    }


STATS_SUMMED = ("candidates_sampled", "candidates_rejected", "segments_accepted", "segments_fallback")


async def test_handler_totals_equal_the_sum_of_response_statistics() -> None:
    handler = RejectionStatsHandler()
    callbacks = {"callbacks": [handler]}
    answers = [
        model().invoke("hi", config=callbacks),  # custom events
        model(max_attempts=2).invoke("hi", config=callbacks),  # a fallback
        model([["BAD-1", "BAD-2"]], max_attempts=2, safety_floor=0.2).invoke("hi", config=callbacks),  # refusal
        await model().ainvoke("hi", config=callbacks),  # async custom events
    ]
    streamed = list(model().stream("hi", config=callbacks))  # decisions on chunks
    answers.append(streamed[-1])
    astreamed = [chunk async for chunk in model(max_attempts=2).astream("hi", config=callbacks)]
    answers.append(astreamed[-1])
    stats = [answer.response_metadata["stars"] for answer in answers]
    snapshot = handler.snapshot()
    expected = {key: sum(s[key] for s in stats) for key in STATS_SUMMED}
    assert snapshot["candidates"] == {
        "judged": expected["candidates_sampled"],
        "rejected": expected["candidates_rejected"],
    }
    assert snapshot["segments"]["accepted"] == expected["segments_accepted"]
    assert snapshot["segments"]["fallback"] == expected["segments_fallback"]
    assert snapshot["reported"] == expected  # what the responses said, summed independently
    assert snapshot["refusals"] == 1
    # the engine's own words, as the chat service counts them (the messages say content_filter)
    assert snapshot["requests"] == {"finished": 6, "in_flight": 0, "by_outcome": {"stop": 5, "refusal": 1}}
    assert answers[2].response_metadata["finish_reason"] == "content_filter"
    assert snapshot["tokens"]["emitted"] == sum(s["tokens_emitted"] for s in stats)
    assert snapshot["rejection_rate"] == pytest.approx(expected["candidates_rejected"] / expected["candidates_sampled"])
    # Attempts per segment, from the decisions of every answer.
    attempts: Counter[int] = Counter()
    for answer in answers:
        per_segment = Counter(
            d["segment_index"] for d in answer.response_metadata["stars_segments"] if not d["fallback"]
        )
        attempts.update(per_segment.values())
    assert snapshot["attempts_per_segment"]["histogram"] == {str(k): attempts[k] for k in sorted(attempts)}
    assert [entry["decisions"] for entry in snapshot["recent"]] == [
        len(answer.response_metadata["stars_segments"]) for answer in answers
    ]
    assert snapshot["first_chunk_s"]["count"] == 2  # the two streamed answers
    json.dumps(snapshot)  # JSON-safe as documented


async def test_the_handler_needs_no_decisions_in_the_message() -> None:
    """Decisions reach the handler live (events, chunks): the default message without them counts the same."""

    async def totals(include_segments: bool) -> dict[str, Any]:
        handler = RejectionStatsHandler()
        callbacks = {"callbacks": [handler]}
        model(include_segments=include_segments).invoke("hi", config=callbacks)
        await model(max_attempts=2, include_segments=include_segments).ainvoke("hi", config=callbacks)
        list(model(include_segments=include_segments).stream("hi", config=callbacks))
        snapshot = handler.snapshot()
        keys = ("candidates", "segments", "attempts_per_segment", "reported", "requests", "tokens")
        return {key: snapshot[key] for key in keys} | {"recent": [e["decisions"] for e in snapshot["recent"]]}

    without = await totals(False)
    assert without == await totals(True)
    assert without["candidates"]["judged"] > 0 and all(without["recent"])


def test_a_decision_delivered_twice_counts_once() -> None:
    stats = RejectionStats()
    run = uuid.uuid4()
    decisions = [decision(0, 1, 0.1, False), decision(0, 2, 0.9, True), decision(1, 1, 0.8, True)]
    stats.start(RunInfo(run, "m"))
    stats.decisions(run, decisions[:2])  # e.g. from custom events
    stats.decisions(run, decisions)  # and again from the chunks
    stats.finish(run, "m", "stop", {"candidates_sampled": 3}, decisions)  # and in the final message
    snapshot = stats.snapshot()
    assert snapshot["candidates"] == {"judged": 3, "rejected": 1}
    assert snapshot["segments"] == {"accepted": 2, "fallback": 0, "dropped": 0}
    assert snapshot["attempts_per_segment"]["histogram"] == {"1": 1, "2": 1}


def test_lost_live_decisions_are_filled_in_from_the_final_message() -> None:
    stats = RejectionStats()
    run = uuid.uuid4()
    full = [
        decision(0, 1, 0.1, False),
        decision(0, 2, 0.2, False),
        decision(0, 3, 0.3, False),
        decision(0, 3, 0.3, False, fallback=True),
    ]
    stats.start(RunInfo(run, "m"))
    stats.decisions(run, [full[0], full[2], full[3]])  # the second rejection's event was lost
    stats.finish(run, "m", "stop", {}, full)
    snapshot = stats.snapshot()
    # Stats semantics: 3 judged, the fallback pick leaves the rejected column.
    assert snapshot["candidates"] == {"judged": 3, "rejected": 2}
    assert snapshot["segments"]["fallback"] == 1
    assert snapshot["attempts_per_segment"]["histogram"] == {"3": 1}
    assert snapshot["per_segment"][0]["rejected"] == 2


def test_segments_that_never_emitted_are_dropped_at_the_end() -> None:
    stats = RejectionStats()
    run = uuid.uuid4()
    stats.start(RunInfo(run, "m"))
    stats.decisions(run, [decision(0, 1, 0.9, True), decision(1, 1, 0.0, False), decision(1, 2, 0.0, False)])
    stats.finish(run, "m", "refusal", {"refused": True}, [])
    snapshot = stats.snapshot()
    assert snapshot["segments"] == {"accepted": 1, "fallback": 0, "dropped": 1}
    assert snapshot["candidates"] == {"judged": 3, "rejected": 2}
    assert snapshot["refusals"] == 1


def test_runs_of_other_models_are_ignored() -> None:
    handler = RejectionStatsHandler()
    run = uuid.uuid4()
    handler.on_chat_model_start({}, [[]], run_id=run, invocation_params={"_type": "openai-chat"})
    handler.on_llm_new_token("x", chunk=None, run_id=run)
    result = LLMResult(
        generations=[[ChatGeneration(message=AIMessage("hello", response_metadata={"model_name": "x"}))]]
    )
    handler.on_llm_end(result, run_id=run)
    snapshot = handler.snapshot()
    assert snapshot["requests"] == {"finished": 0, "in_flight": 0, "by_outcome": {}}


class FailingObserver:
    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any) -> None:
            raise RuntimeError(f"observer bug in {name}")

        return fail


def test_a_failing_observer_breaks_neither_the_call_nor_the_counts() -> None:
    handler = RejectionStatsHandler(observers=[FailingObserver()])
    message = model().invoke("hi", config={"callbacks": [handler]})
    assert message.content == "Hello, world!"
    assert handler.snapshot()["candidates"] == {"judged": 5, "rejected": 3}


class Broken(ScriptedBackend):
    def open(self, messages: Any, **params: Any) -> Any:
        generation = super().open(messages, **params)

        def fail(*args: Any) -> Any:
            raise ConnectionError("backend went away")

        generation.draft = fail  # type: ignore[method-assign]
        return generation


async def test_failed_requests_are_counted_and_leave_nothing_in_flight() -> None:
    handler = RejectionStatsHandler()
    llm = STARSChatModel(backend=Broken([[f"x{EOS}"]]), reward=KeywordReward(), config=CONFIG)
    with pytest.raises(ConnectionError):
        llm.invoke("hi", config={"callbacks": [handler]})
    with pytest.raises(ConnectionError):
        await llm.ainvoke("hi", config={"callbacks": [handler]})
    with pytest.raises(ConnectionError):
        list(llm.stream("hi", config={"callbacks": [handler]}))
    assert handler.snapshot()["requests"] == {"finished": 3, "in_flight": 0, "by_outcome": {"error": 3}}


def test_per_segment_profile() -> None:
    handler = RejectionStatsHandler()
    for _ in range(2):
        model().invoke("hi", config={"callbacks": [handler]})
    profile = handler.snapshot()["per_segment"]
    assert [(p["segment_index"], p["judged"], p["rejected"]) for p in profile] == [(0, 4, 2), (1, 6, 4)]
    assert profile[0]["rejection_rate"] == 0.5
    assert profile[1]["mean_emitted_reward"] == 1.0
    assert profile[1]["mean_reward"] == pytest.approx(2 / 6)
