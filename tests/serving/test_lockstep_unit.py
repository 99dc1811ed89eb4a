"""The lockstep scheduler over a scripted batch backend whose drafts name their request.

Every candidate text carries its request's id, so an answer that contains another request's
text would show that the scheduler mixed requests up.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from stars_guard import STARSConfig
from stars_guard.capabilities import BackendCapabilities, RewardCapabilities
from stars_guard.engine import STARSEngine
from stars_guard.errors import ConfigError
from stars_guard.messages import ChatMessage, as_conversation, last_user_text
from stars_guard.protocols import Candidate, DraftRequest, OpenRequest, RewardScores
from stars_guard.serving.lockstep import LockstepBackend, LockstepGeneration, supports_lockstep
from tests.doubles import ScriptedBackend, ScriptedReward, make_candidate
from tests.serving.doubles import wait_until


class TaggedGeneration:
    """Drafts `<tag>.<round>.<index>;` segments; records what it committed."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.prompt_tokens = 3
        self.llm_forward_tokens = 3
        self.llm_calls = 0
        self.rounds = 0
        self.latest: list[Candidate] = []
        self.committed: list[str] = []
        self.closed = False

    def retain(self, candidate: Candidate) -> None:
        assert any(candidate is drafted for drafted in self.latest)

    def commit(self, candidate: Candidate) -> None:
        assert any(candidate is drafted for drafted in self.latest)
        self.committed.append(candidate.text)

    def close(self) -> None:
        self.closed = True


class TaggedBatchBackend:
    """A `BatchDrafter` double: records which requests shared each round and on which thread."""

    model_name = "tagged"
    capabilities = BackendCapabilities(batch_drafting=True)

    def __init__(self, fail_on_round: int | None = None) -> None:
        self.rounds: list[list[str]] = []
        self.threads: set[str] = set()
        self.fail_on_round = fail_on_round
        self.lock = threading.Lock()

    def open(self, request: OpenRequest) -> TaggedGeneration:
        self.threads.add(threading.current_thread().name)
        return TaggedGeneration(last_user_text(list(request.messages)))

    def draft_batch(self, requests: Sequence[DraftRequest]) -> list[list[Candidate]]:
        self.threads.add(threading.current_thread().name)
        with self.lock:
            self.rounds.append([request.generation.tag for request in requests])
            if self.fail_on_round is not None and len(self.rounds) == self.fail_on_round:
                raise RuntimeError("the model fell over")
        results = []
        for request in requests:
            generation = request.generation
            generation.llm_calls += 1
            generation.rounds += 1
            texts = [f"{generation.tag}.{generation.rounds}.{index};" for index in range(request.num_candidates)]
            generation.latest = [make_candidate(text, request.max_tokens) for text in texts]
            results.append(generation.latest)
        return results


def _engine(backend: object, **config: object) -> STARSEngine:
    # Accept everything: every round's first candidate becomes the segment.
    settings = {"segment_size": 16, "candidates_per_round": 2, "max_new_tokens": 48, **config}
    return STARSEngine(backend, ScriptedReward(lambda text: 1.0), STARSConfig(**settings))  # type: ignore[arg-type]


def test_concurrent_requests_share_rounds_and_never_mix() -> None:
    inner = TaggedBatchBackend()
    backend = LockstepBackend(inner, max_wait_s=0.5)
    engine = _engine(backend, threshold_mode="absolute", reward_threshold=0.0, alpha=1.0)
    tags = [f"r{index:02d}" for index in range(32)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda tag: engine.run(tag, seed=int(tag[1:])), tags))
    backend.close()
    for tag, answer in zip(tags, answers, strict=True):
        assert answer.text == f"{tag}.1.0;{tag}.2.0;{tag}.3.0;{tag}.4.0;{tag}.5.0;{tag}.6.0;"[: len(answer.text)]
        assert answer.text.startswith(f"{tag}.1.0;")
        assert all(part.startswith(tag) for part in answer.text.split(";") if part)
    # Every round holds distinct requests, and rounds were shared.
    assert all(len(set(round_tags)) == len(round_tags) for round_tags in inner.rounds)
    assert backend.stats.largest_round > 1
    assert backend.stats.drafts == sum(len(round_tags) for round_tags in inner.rounds)
    assert backend.stats.mean_round > 2  # thread timing varies; batching must still be the rule
    # Prefill and drafting both ran on the scheduler thread only.
    assert inner.threads == {"stars-lockstep"}
    assert backend.open_generations == 0


def _open(backend: LockstepBackend, tag: str, seed: int) -> LockstepGeneration:
    """A generation whose drafts are tagged `tag` (the prompt)."""
    return backend.open(
        OpenRequest([ChatMessage("user", tag)], max_new_tokens=8, temperature=1.0, top_p=1.0, seed=seed)
    )


class Clock:
    """A settable clock for the scheduler's patience rule: it moves only when a test says so.

    With it frozen a round can start only because every open generation asked for it (or one
    closed), so each test below is about the order of events, never about how fast a thread runs.
    """

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _draft_in_thread(generation: LockstepGeneration) -> tuple[threading.Thread, threading.Event]:
    """Start `generation.draft(2, 4)` on its own thread; the event is set when it returns."""
    done = threading.Event()

    def draft() -> None:
        generation.draft(2, 4)
        done.set()

    thread = threading.Thread(target=draft, daemon=True)
    thread.start()
    return thread, done


def test_a_round_waits_for_every_open_generation() -> None:
    inner = TaggedBatchBackend()
    backend = LockstepBackend(inner, max_wait_s=5.0, clock=Clock())
    first = _open(backend, "a", 0)
    second = _open(backend, "b", 1)
    thread, done = _draft_in_thread(first)
    wait_until(lambda: backend.waiting_drafts == 1, what="the first draft to queue")
    assert not done.wait(0.05), "the round must wait for the other open generation"
    second.draft(2, 4)
    thread.join(10)
    assert done.is_set()
    assert inner.rounds == [["a", "b"]]
    first.close()
    second.close()
    backend.close()


def test_a_slow_request_holds_the_others_back_at_most_max_wait() -> None:
    inner = TaggedBatchBackend()
    clock = Clock()
    backend = LockstepBackend(inner, max_wait_s=0.25, clock=clock)  # under the usual-gap patience (0.305 s)
    busy = _open(backend, "busy", 0)
    quick = _open(backend, "quick", 1)
    thread, done = _draft_in_thread(quick)  # `busy` never drafts
    wait_until(lambda: backend.waiting_drafts == 1, what="the quick draft to queue")
    clock.now += 0.125
    assert not done.wait(0.05), "half of max_wait_s has passed: the round still waits for `busy`"
    clock.now += 0.125
    thread.join(10)
    assert done.is_set()
    assert inner.rounds == [["quick"]]
    busy.close()
    quick.close()
    backend.close()


def test_closing_a_generation_releases_a_waiting_round() -> None:
    inner = TaggedBatchBackend()
    backend = LockstepBackend(inner, max_wait_s=30.0, clock=Clock())
    gone = _open(backend, "gone", 0)
    stay = _open(backend, "stay", 1)
    thread, done = _draft_in_thread(stay)
    wait_until(lambda: backend.waiting_drafts == 1, what="the draft to queue")
    gone.close()
    thread.join(10)
    assert done.is_set()
    assert gone.inner.closed
    assert inner.rounds == [["stay"]]
    stay.close()
    backend.close()


def test_a_failing_round_fails_each_of_its_requests_and_the_scheduler_goes_on() -> None:
    inner = TaggedBatchBackend(fail_on_round=1)
    backend = LockstepBackend(inner, max_wait_s=5.0)
    generations = [_open(backend, tag, 0) for tag in ("x", "y")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(_draft_or_error, generations))
    assert inner.rounds == [["x", "y"]]
    assert all(isinstance(outcome, RuntimeError) and "fell over" in str(outcome) for outcome in outcomes)
    for generation in generations:
        generation.close()
    assert _engine(backend).run("z").text.startswith("z.1.0;")
    backend.close()


def _draft_or_error(generation: object) -> object:
    try:
        return generation.draft(2, 4)  # type: ignore[attr-defined]
    except RuntimeError as exc:
        return exc


def test_a_closed_backend_refuses_new_work_clearly() -> None:
    backend = LockstepBackend(TaggedBatchBackend())
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        _open(backend, "late", 0)


def test_only_batch_drafting_backends_can_run_in_lockstep() -> None:
    scripted = ScriptedBackend([["a"]])
    assert not supports_lockstep(scripted)
    assert supports_lockstep(TaggedBatchBackend())
    with pytest.raises(ConfigError, match="draft_batch"):
        LockstepBackend(scripted)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_wait_s"):
        LockstepBackend(TaggedBatchBackend(), max_wait_s=-1)


class RecordingScorer:
    """Reward = len(prompt) * 1000 + len(response): a mixed-up answer shows in the number."""

    name = "recording"

    def __init__(self, batched: bool, fail: bool = False) -> None:
        self.calls: list[int] = []  # requests per call
        self.fail = fail
        self.capabilities = RewardCapabilities(batched_scoring=batched)
        if batched:
            self.score_many = self._score_many

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        self.calls.append(1)
        prompt = last_user_text(as_conversation(conversation))
        return [len(prompt) * 1000.0 + len(text) for text in responses]

    def _score_many(self, items: Sequence[tuple[Sequence[ChatMessage], Sequence[str]]]) -> list[RewardScores]:
        self.calls.append(len(items))
        if self.fail:
            raise RuntimeError("scorer down")
        return [
            RewardScores([len(last_user_text(turns)) * 1000.0 + len(text) for text in responses])
            for turns, responses in items
        ]


@pytest.mark.parametrize("batched", [True, False])
def test_batching_reward_scores_concurrent_requests_together_without_mixing_them(batched: bool) -> None:
    from stars_guard.serving.batching import BatchingReward

    scorer = RecordingScorer(batched)
    reward = BatchingReward(scorer, window_s=0.2)
    barrier = threading.Barrier(8)

    def ask(index: int) -> list[float]:
        barrier.wait()
        return reward.score("p" * (index + 1), ["x" * index, "y" * (2 * index)])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(ask, range(8)))
    assert results == [[(i + 1) * 1000.0 + i, (i + 1) * 1000.0 + 2 * i] for i in range(8)]
    assert reward.requests == 8 and reward.batches < 8
    assert sum(scorer.calls) == 8
    assert reward.name == "recording"


def test_batching_reward_failure_reaches_every_request_of_the_batch() -> None:
    from stars_guard.serving.batching import BatchingReward

    reward = BatchingReward(RecordingScorer(batched=True, fail=True), window_s=0.2)
    barrier = threading.Barrier(3)

    def ask(index: int) -> object:
        barrier.wait()
        try:
            return reward.score(f"prompt {index}", ["a"])
        except RuntimeError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(ask, range(3)))
    assert all(isinstance(outcome, RuntimeError) and "scorer down" in str(outcome) for outcome in outcomes)
    with pytest.raises(ConfigError, match="window_s"):
        BatchingReward(RecordingScorer(batched=False), window_s=-1)


def test_batching_reward_can_score_on_the_lockstep_scheduler_thread() -> None:
    from stars_guard.serving.batching import BatchingReward

    threads: list[str] = []

    class ThreadNoting(RecordingScorer):
        def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
            threads.append(threading.current_thread().name)
            return super().score(prompt, responses)

    backend = LockstepBackend(TaggedBatchBackend())
    reward = BatchingReward(ThreadNoting(batched=False), runner=backend.run_on_scheduler)
    assert reward.score("pp", ["abc"]) == [2003.0]
    assert threads == ["stars-lockstep"]
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        reward.score("pp", ["abc"])  # a closed scheduler fails the call instead of hanging it
