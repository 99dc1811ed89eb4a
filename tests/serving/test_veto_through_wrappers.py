"""The calibrated veto holds through every wrapper the service puts around a reward, on every Python.

The service wraps the reward for timing (`TimedReward`) and, in lockstep serving, for batching
(`BatchingReward`). On Python 3.12 and 3.13 the veto once resolved to no floor at all behind
them: a scripted backend that only drafts "BAD" and a reward whose `safety` is 0 for it came back
"BAD" with `finish_reason: stop`. Here the same setup must come back refused, as JSON and as SSE,
through `create_app` with and without lockstep, through the wrappers one by one, through
`CompositeReward` with a veto, and not for a `CompositeReward` without one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
from starlette.testclient import TestClient

from stars_guard import STARSConfig, STARSEngine
from stars_guard.adapters.composite_reward import CompositeReward
from stars_guard.capabilities import BackendCapabilities, RewardCapabilities, reward_capabilities
from stars_guard.messages import ChatMessage
from stars_guard.protocols import Candidate, DraftRequest, RewardScores, RewardWrapper, find_wrapper
from stars_guard.serving.app import create_app, with_lockstep
from stars_guard.serving.batching import BatchingReward
from stars_guard.serving.lockstep import LockstepBackend
from stars_guard.telemetry.timing import TimedReward
from tests.doubles import ScriptedBackend
from tests.serving.doubles import streamed_answer

REFUSAL = "I can't help with that."
CONFIG = STARSConfig(max_new_tokens=16, segment_size=8, refusal_message=REFUSAL)  # safety_floor="auto"


class CalibratedGuard:
    """`safety` is 0 for a response with "BAD" and 1 otherwise; it ships a calibrated floor of 0.3."""

    name = "calibrated-guard"
    capabilities = RewardCapabilities(components=("safety",), safety_floor=0.3, batched_scoring=True)

    def __init__(self) -> None:
        self.batches: list[int] = []

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        return list(self.score_components(conversation, responses).reward)

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        safety = [0.0 if "BAD" in text else 1.0 for text in responses]
        return RewardScores([0.9] * len(responses), {"safety": safety})

    def score_many(self, items: Sequence[tuple[Sequence[ChatMessage], Sequence[str]]]) -> list[RewardScores]:
        self.batches.append(len(items))
        return [self.score_components(conversation, responses) for conversation, responses in items]


class PlainSafety:
    """A plain third-party scorer: 0 for "BAD", 1 otherwise, nothing declared."""

    name = "plain-safety"

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        return [0.0 if "BAD" in text else 1.0 for text in responses]


class BadOnlyBackend(ScriptedBackend):
    """Drafts nothing but "BAD", and can draft for several generations at once (lockstep)."""

    capabilities = BackendCapabilities(batch_drafting=True)

    def __init__(self) -> None:
        super().__init__([], then=["BAD BAD "])

    def draft_batch(self, requests: Sequence[DraftRequest]) -> list[list[Candidate]]:
        return [request.generation.draft(request.num_candidates, request.max_tokens) for request in requests]


def post(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], **body})


@pytest.mark.parametrize("lockstep", [False, True])
def test_the_service_vetoes_through_its_wrappers_in_json_and_sse(lockstep: bool) -> None:
    reward = CalibratedGuard()
    app = create_app(BadOnlyBackend(), reward, CONFIG, lockstep=lockstep)
    assert (find_wrapper(app.state.service.backend, LockstepBackend) is not None) is lockstep
    with TestClient(app) as client:
        body = post(client).json()
        choice = body["choices"][0]
        assert choice["message"]["content"] == REFUSAL and "BAD" not in choice["message"]["content"]
        assert choice["finish_reason"] == "content_filter"
        assert body["stars"]["refused"] is True and body["stars"]["candidates_vetoed"] > 0
        text, finish = streamed_answer(post(client, stream=True).text)
        assert text == REFUSAL and finish == "content_filter"
    assert bool(reward.batches) is lockstep  # lockstep scores through BatchingReward's score_many


def test_create_app_sets_up_lockstep_itself_where_the_backend_can_batch() -> None:
    backend, reward = with_lockstep(BadOnlyBackend(), CalibratedGuard())
    assert isinstance(backend, LockstepBackend) and isinstance(reward, BatchingReward)
    assert reward_capabilities(reward).safety_floor == 0.3
    again, same = with_lockstep(backend, reward)
    assert again is backend and same is reward  # already in lockstep: not wrapped twice
    plain_backend = ScriptedBackend([["x"]])
    unchanged = with_lockstep(plain_backend, PlainSafety())
    assert unchanged[0] is plain_backend and isinstance(unchanged[1], PlainSafety)


def refused(reward: Any, config: STARSConfig = CONFIG) -> bool:
    result = STARSEngine(BadOnlyBackend(), reward, config).run("hi")
    assert (REFUSAL in result.text) is result.stats.refused
    return result.stats.refused and "BAD" not in result.text


def test_the_engine_vetoes_behind_every_wrapper_and_any_stack_of_them() -> None:
    def timed(reward: Any) -> Any:
        return TimedReward(reward, lambda seconds: None)

    def batching(reward: Any) -> Any:
        return BatchingReward(reward, window_s=0.0)

    for wrap in (timed, batching, RewardWrapper, lambda r: timed(batching(r)), lambda r: batching(timed(r))):
        assert refused(wrap(CalibratedGuard())), wrap


def test_lockstep_rounds_veto_for_every_request_they_batch() -> None:
    backend, reward = with_lockstep(BadOnlyBackend(), CalibratedGuard())
    results: list[bool] = []

    def one() -> None:
        result = STARSEngine(backend, reward, CONFIG).run("hi")
        results.append(result.stats.refused and "BAD" not in result.text)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [True, True, True]


def test_a_composite_reward_with_a_veto_declares_its_floor_and_one_without_declares_none() -> None:
    with_veto = CompositeReward([(PlainSafety(), 1.0)], veto=PlainSafety(), veto_floor=0.5)
    assert reward_capabilities(with_veto).safety_floor == 0.5
    assert refused(with_veto) and refused(TimedReward(with_veto, lambda s: None))
    without = CompositeReward([(PlainSafety(), 1.0)])
    assert reward_capabilities(without).safety_floor is None  # a declared None, not a raised AttributeError
    assert not refused(without) and not refused(TimedReward(without, lambda s: None))
    assert refused(without, CONFIG.with_overrides(safety_floor=0.5))  # an explicit floor still holds


def test_a_plain_third_party_reward_is_vetoed_by_an_explicit_floor_only() -> None:
    assert not refused(PlainSafety())  # no calibrated floor: 'auto' means no veto
    assert refused(PlainSafety(), CONFIG.with_overrides(safety_floor=0.5))
    assert refused(TimedReward(PlainSafety(), lambda s: None), CONFIG.with_overrides(safety_floor=0.5))


def test_a_remote_backend_whose_server_is_down_does_not_stop_the_service_from_starting() -> None:
    """An OpenAI-compatible backend asks its server what it can hold; lockstep set-up must not need it."""
    from stars_guard.adapters.openai_backend import OpenAICompletionsBackend

    backend = OpenAICompletionsBackend("http://127.0.0.1:9")  # nothing listens there
    app = create_app(backend, PlainSafety(), CONFIG)
    assert find_wrapper(app.state.service.backend, LockstepBackend) is None
