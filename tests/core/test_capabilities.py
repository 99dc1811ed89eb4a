"""Optional capabilities are protocols checked with `isinstance`, and wrappers pass them on honestly.

A wrapper that claimed a capability its inner object lacks would make the engine call what is not
there; one that hid a capability would silently turn off entropy segments or retry counts.
"""

from __future__ import annotations

import inspect

import pytest

from stars_guard import STARSConfig, STARSEngine
from stars_guard.errors import ConfigError
from stars_guard.messages import ChatMessage
from stars_guard.protocols import (
    BackendWrapper,
    BatchDrafter,
    BatchOpener,
    Candidate,
    DraftRequest,
    EntropyDrafter,
    GenerationWrapper,
    OpenRequest,
    RetryReporter,
)
from stars_guard.telemetry.timing import TimedBackend
from tests.doubles import ScriptedBackend, ScriptedGeneration, ScriptedReward, make_candidate

REQUEST = OpenRequest([ChatMessage("user", "q?")], max_new_tokens=8, temperature=1.0, top_p=1.0, seed=0)


class EntropyGeneration(ScriptedGeneration):
    """A scripted generation that takes an entropy cut and records each one it was given."""

    supports_entropy_segments = True

    def __init__(self, rounds: list[list[str]]) -> None:
        super().__init__(rounds)
        self.cuts: list[float | None] = []

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        self.cuts.append(entropy_cut)
        return super().draft(num_candidates, max_tokens)


class RetryingGeneration(ScriptedGeneration):
    backend_retries = 3


class OneGenerationBackend:
    """Opens the generation it was given (with batch capabilities, for the wrapper checks)."""

    model_name = "one"
    tokenizer = "a tokenizer"

    def __init__(self, generation: ScriptedGeneration) -> None:
        self.generation = generation
        self.requests: list[OpenRequest] = []

    def open(self, request: OpenRequest) -> ScriptedGeneration:
        self.requests.append(request)
        return self.generation

    def open_batch(self, requests: list[OpenRequest]) -> list[ScriptedGeneration]:
        return [self.open(request) for request in requests]

    def draft_batch(self, requests: list[DraftRequest]) -> list[list[Candidate]]:
        return [request.generation.draft(request.num_candidates, request.max_tokens) for request in requests]


def test_a_generation_wrapper_has_entropy_cuts_exactly_when_its_inner_generation_does() -> None:
    entropy = GenerationWrapper(EntropyGeneration([["ab"]]))
    plain = GenerationWrapper(ScriptedGeneration([["ab"]]))
    assert isinstance(entropy, EntropyDrafter) and not isinstance(plain, EntropyDrafter)
    # From Python 3.12 isinstance looks attributes up statically (no __getattr__): the same answer.
    assert inspect.getattr_static(entropy, "supports_entropy_segments") is True
    with pytest.raises(AttributeError):
        inspect.getattr_static(plain, "supports_entropy_segments")
    assert [c.text for c in entropy.draft(1, 4, entropy_cut=2.5)] == ["ab"]
    assert entropy.inner.cuts == [2.5]
    with pytest.raises(TypeError, match="EntropyDrafter"):
        plain.draft(1, 4, entropy_cut=2.5)
    assert [c.text for c in plain.draft(1, 4)] == ["ab"]  # no cut: any generation drafts


def test_a_generation_wrapper_reports_its_inner_retries_and_zero_without_any() -> None:
    assert isinstance(GenerationWrapper(RetryingGeneration([])), RetryReporter)
    assert GenerationWrapper(RetryingGeneration([])).backend_retries == 3
    assert GenerationWrapper(ScriptedGeneration([])).backend_retries == 0
    assert not isinstance(ScriptedGeneration([]), RetryReporter)


def test_a_backend_wrapper_passes_requests_and_extras_on_but_never_the_batch_capabilities() -> None:
    inner = OneGenerationBackend(ScriptedGeneration([["ab"]]))
    assert isinstance(inner, BatchDrafter) and isinstance(inner, BatchOpener)
    wrapper = BackendWrapper(inner)
    assert wrapper.open(REQUEST) is inner.generation and inner.requests == [REQUEST]
    assert wrapper.model_name == "one" and wrapper.tokenizer == "a tokenizer"
    # Batch calls take and return the inner backend's own generations, not the ones a wrapper hands out.
    assert not isinstance(wrapper, BatchDrafter) and not isinstance(wrapper, BatchOpener)
    timed = TimedBackend(inner, lambda seconds: None)
    assert not isinstance(timed, BatchDrafter) and not isinstance(timed, BatchOpener)


def test_the_engine_opens_with_one_request_and_reads_the_capabilities() -> None:
    reward = ScriptedReward(lambda text: 1.0)
    generation = EntropyGeneration([["abcd"], ["efgh"]])
    backend = OneGenerationBackend(generation)
    config = STARSConfig(segmentation="entropy", entropy_threshold=1.5, segment_size=4, max_new_tokens=8)
    result = STARSEngine(TimedBackend(backend, lambda seconds: None), reward, config).run("q?", seed=5)
    assert result.text == "abcdefgh" and generation.cuts == [1.5, 1.5]
    (request,) = backend.requests
    assert (request.max_new_tokens, request.seed, request.top_p) == (8, 5, config.top_p)
    assert [(m.role, m.content) for m in request.messages] == [("user", "q?")]

    retrying = OneGenerationBackend(RetryingGeneration([["abcd"]]))
    stats = STARSEngine(retrying, reward, STARSConfig(segment_size=4, max_new_tokens=4)).run("q?").stats
    assert stats.backend_retries == 3


def test_entropy_segments_through_a_wrapper_need_an_entropy_drafter_inside() -> None:
    wrapped = TimedBackend(ScriptedBackend([["abcd"]]), lambda seconds: None)
    with pytest.raises(ConfigError, match="segmentation='entropy'"):
        STARSEngine(wrapped, ScriptedReward(lambda text: 1.0), STARSConfig(segmentation="entropy")).run("q?")


def test_make_candidate_marks_eos_as_the_draft_end() -> None:
    assert make_candidate("ab<eos>").finish_reason == "eos"
    assert make_candidate("abc", max_tokens=2).finish_reason == "length"
