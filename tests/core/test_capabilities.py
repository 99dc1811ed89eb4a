"""Capabilities are declared data, and every wrapper passes its inner object's value on explicitly.

Before, capabilities were discovered with `isinstance` against runtime-checkable protocols through
wrappers that forwarded attributes with `__getattr__`. From Python 3.12 `isinstance` looks
attributes up statically, so a wrapped reward silently lost its calibrated veto floor. These tests
hold on every interpreter because nothing here depends on attribute discovery; the matrix in
`make test` (noxfile.py) runs them on 3.11, 3.12 and 3.13.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from stars_guard import STARSConfig, STARSEngine
from stars_guard.capabilities import (
    BackendCapabilities,
    GenerationCapabilities,
    RewardCapabilities,
    backend_capabilities,
    generation_capabilities,
    reward_capabilities,
)
from stars_guard.errors import ConfigError
from stars_guard.messages import ChatMessage
from stars_guard.protocols import (
    BackendWrapper,
    Candidate,
    DraftRequest,
    GenerationWrapper,
    OpenRequest,
    RewardScores,
    RewardWrapper,
    constraint_support,
    find_wrapper,
)
from stars_guard.telemetry.timing import TimedBackend, TimedReward
from stars_guard.tools import OutputConstraint, ToolSpec
from tests.doubles import ScriptedBackend, ScriptedGeneration, ScriptedReward, make_candidate

REQUEST = OpenRequest([ChatMessage("user", "q?")], max_new_tokens=8, temperature=1.0, top_p=1.0, seed=0)


class EntropyGeneration(ScriptedGeneration):
    """A scripted generation that takes an entropy cut and records each one it was given."""

    capabilities = GenerationCapabilities(entropy_segments=True)

    def __init__(self, rounds: list[list[str]]) -> None:
        super().__init__(rounds)
        self.cuts: list[float | None] = []

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        self.cuts.append(entropy_cut)
        return super().draft(num_candidates, max_tokens)


class RetryingGeneration(ScriptedGeneration):
    capabilities = GenerationCapabilities(reports_retries=True)
    backend_retries = 3


class OneGenerationBackend:
    """Opens the generation it was given (with batch capabilities, for the wrapper checks)."""

    model_name = "one"
    tokenizer = "a tokenizer"
    capabilities = BackendCapabilities(batch_drafting=True, batch_opening=True, constraints="segments")

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


def test_a_generation_wrapper_declares_entropy_cuts_exactly_when_its_inner_generation_does() -> None:
    entropy = GenerationWrapper(EntropyGeneration([["ab"]]))
    plain = GenerationWrapper(ScriptedGeneration([["ab"]]))
    assert generation_capabilities(entropy).entropy_segments
    assert not generation_capabilities(plain).entropy_segments
    assert [c.text for c in entropy.draft(1, 4, entropy_cut=2.5)] == ["ab"]
    assert entropy.inner.cuts == [2.5]
    with pytest.raises(TypeError, match="entropy_segments"):
        plain.draft(1, 4, entropy_cut=2.5)
    assert [c.text for c in plain.draft(1, 4)] == ["ab"]  # no cut: any generation drafts


def test_a_generation_wrapper_reports_its_inner_retries_and_zero_without_any() -> None:
    assert generation_capabilities(GenerationWrapper(RetryingGeneration([]))).reports_retries
    assert GenerationWrapper(RetryingGeneration([])).backend_retries == 3
    assert GenerationWrapper(ScriptedGeneration([])).backend_retries == 0


def test_no_wrapper_forwards_attributes_it_does_not_declare() -> None:
    """The class of bug: a wrapper that forwards everything makes capabilities depend on how the
    interpreter looks attributes up. Wrappers forward nothing; extras are read from `inner`."""
    inner = OneGenerationBackend(ScriptedGeneration([["ab"]]))
    wrapper = BackendWrapper(inner)
    assert wrapper.open(REQUEST) is inner.generation and inner.requests == [REQUEST]
    assert wrapper.model_name == "one" and wrapper.inner.tokenizer == "a tokenizer"
    for wrapped, name in (
        (wrapper, "tokenizer"),
        (GenerationWrapper(RetryingGeneration([])), "requested"),
        (TimedReward(ScriptedReward(lambda text: 1.0), lambda seconds: None), "calls"),
    ):
        assert not hasattr(type(wrapped), "__getattr__")
        with pytest.raises(AttributeError):
            getattr(wrapped, name)


def test_a_backend_wrapper_passes_constraint_support_on_but_never_the_batch_capabilities() -> None:
    inner = OneGenerationBackend(ScriptedGeneration([["ab"]]))
    assert backend_capabilities(inner).batch_drafting and backend_capabilities(inner).batch_opening
    forced = OutputConstraint("json_schema", schema={"type": "object"})
    for wrapper in (BackendWrapper(inner), TimedBackend(inner, lambda seconds: None)):
        capabilities = backend_capabilities(wrapper)
        # Batch calls take and return the inner backend's own generations, not the wrapped ones.
        assert not capabilities.batch_drafting and not capabilities.batch_opening
        assert constraint_support(wrapper, forced) == "segments"
    assert find_wrapper(TimedBackend(BackendWrapper(inner), lambda s: None), BackendWrapper) is not None
    assert find_wrapper(inner, BackendWrapper) is None


def test_constraint_support_follows_the_declared_value() -> None:
    whole = BackendCapabilities(constraints="whole")
    schema = OutputConstraint("json_schema", schema={"type": "object"})
    add = ToolSpec("add", "adds", {"type": "object"})
    auto_calls = OutputConstraint("tool_calls", tools=(add,))
    forced_calls = OutputConstraint("tool_calls", tools=(add,), required=True)
    assert whole.constraint_support(schema) == "whole" and whole.constraint_support(forced_calls) == "whole"
    assert whole.constraint_support(auto_calls) == "none"  # free text around the calls: per segment only
    assert BackendCapabilities(constraints="segments").constraint_support(auto_calls) == "segments"
    assert constraint_support(ScriptedBackend([["x"]]), schema) == "none"
    with pytest.raises(ConfigError, match="constraints"):
        BackendCapabilities(constraints="sometimes")  # type: ignore[arg-type]


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


def test_entropy_segments_through_a_wrapper_need_an_entropy_generation_inside() -> None:
    wrapped = TimedBackend(ScriptedBackend([["abcd"]]), lambda seconds: None)
    with pytest.raises(ConfigError, match="segmentation='entropy'"):
        STARSEngine(wrapped, ScriptedReward(lambda text: 1.0), STARSConfig(segmentation="entropy")).run("q?")


class PlainReward:
    """A third-party reward as most people write one: a name and `score`, nothing declared."""

    name = "plain"

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        return [0.0 if "BAD" in text else 1.0 for text in responses]


class OldStyleCalibrated(PlainReward):
    """A reward written against the old markers: a floor, but no declared capabilities."""

    default_safety_floor = 0.3


def test_a_plain_third_party_reward_gets_nothing_extra_and_keeps_working() -> None:
    assert reward_capabilities(PlainReward()) == RewardCapabilities()
    result = STARSEngine(ScriptedBackend([["fine.<eos>"]]), PlainReward(), STARSConfig(max_new_tokens=8)).run("q")
    assert result.text == "fine." and not result.stats.refused
    # 'auto' finds no calibrated floor on a plain reward: no veto, so its low score is only a low score.
    low = STARSEngine(ScriptedBackend([["BAD.<eos>"]]), PlainReward(), STARSConfig(max_new_tokens=8)).run("q")
    assert low.text == "BAD." and low.stats.candidates_vetoed == 0


def test_an_old_marker_without_declared_capabilities_is_refused_not_dropped() -> None:
    with pytest.raises(ConfigError, match=r"default_safety_floor.*capabilities = RewardCapabilities"):
        STARSEngine(ScriptedBackend([["x"]]), OldStyleCalibrated(), STARSConfig()).run("q")

    class WrongType(PlainReward):
        capabilities = ("safety_floor", 0.3)

    with pytest.raises(ConfigError, match="must be a RewardCapabilities"):
        reward_capabilities(WrongType())


def test_reward_capabilities_are_validated_up_front() -> None:
    with pytest.raises(ConfigError, match="safety_floor"):
        RewardCapabilities(components=("safety",), safety_floor=math.nan)
    with pytest.raises(ConfigError, match="vetoes"):
        RewardCapabilities(components=("safety",), vetoes={"answering": 0.1})  # not a reported component
    with pytest.raises(ConfigError, match="components"):
        RewardCapabilities(components="safety")  # type: ignore[arg-type]
    declared = RewardCapabilities(components=["safety", "answering"], vetoes={"answering": 0.04})  # type: ignore[arg-type]
    assert declared.components == ("safety", "answering") and declared.vetoes == (("answering", 0.04),)
    hash(declared)  # frozen all the way down


class Renamed(RewardWrapper):
    """A user's own wrapper: changes the name only, and inherits the explicit passing-on."""

    @property
    def name(self) -> str:
        return "renamed"


class Guarded:
    """A reward with a `safety` component, its own `answering` veto and a calibrated floor."""

    name = "guarded"
    capabilities = RewardCapabilities(
        components=("safety", "answering"), safety_floor=0.3, vetoes={"answering": 0.04}, batched_scoring=True
    )

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        return list(self.score_components(conversation, responses).reward)

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        return RewardScores(
            [1.0] * len(responses),
            {
                "safety": [0.0 if "BAD" in text else 1.0 for text in responses],
                "answering": [0.0 if "HOW-TO" in text else 1.0 for text in responses],
            },
        )

    def score_many(self, items: Sequence[tuple[Sequence[ChatMessage], Sequence[str]]]) -> list[RewardScores]:
        return [self.score_components(conversation, responses) for conversation, responses in items]


def test_every_reward_wrapper_passes_the_floor_components_and_vetoes_on_but_not_batching() -> None:
    inner = Guarded()
    for wrapper in (
        RewardWrapper(inner),
        TimedReward(inner, lambda seconds: None),
        Renamed(inner),
        TimedReward(Renamed(TimedReward(inner, lambda s: None)), lambda s: None),
    ):
        capabilities = reward_capabilities(wrapper)
        assert capabilities.safety_floor == 0.3 and capabilities.components == ("safety", "answering")
        assert capabilities.vetoes == (("answering", 0.04),)
        assert not capabilities.batched_scoring  # offered only by a wrapper that implements score_many


@pytest.mark.parametrize("text", ["BAD words.", "HOW-TO steps."])
def test_each_veto_holds_through_every_wrapper_with_auto_and_a_number(text: str) -> None:
    wrappers = [
        lambda r: r,
        RewardWrapper,
        Renamed,
        lambda r: TimedReward(r, lambda seconds: None),
        lambda r: TimedReward(Renamed(r), lambda seconds: None),
    ]
    for wrap in wrappers:
        for floor in ("auto", 0.1):
            engine = STARSEngine(
                ScriptedBackend([[text]], then=[text]), wrap(Guarded()), STARSConfig(safety_floor=floor)
            )
            result = engine.run("q")
            assert result.stats.refused and result.stats.refusal_reason == "veto", (wrap, floor)
            assert "BAD" not in result.text and "HOW-TO" not in result.text
        off = STARSEngine(ScriptedBackend([[text]], then=[text]), wrap(Guarded()), STARSConfig(safety_floor=None))
        assert not off.run("q").stats.refused  # None turns every veto off, the reward's own ones included


def test_a_safety_floor_moves_only_the_safety_veto_never_the_rewards_own() -> None:
    """`safety_floor=0.1` once weakened the trained gate's answering veto, since both shared one number."""

    class Borderline(Guarded):
        def score_components(self, conversation, responses):  # type: ignore[no-untyped-def]
            return RewardScores(
                [1.0] * len(responses), {"safety": [0.2] * len(responses), "answering": [0.03] * len(responses)}
            )

    at_default = STARSEngine(ScriptedBackend([["x"]], then=["x"]), Borderline(), STARSConfig()).run("q")
    assert at_default.stats.refusal_reason == "veto"
    lowered = STARSEngine(ScriptedBackend([["x"]], then=["x"]), Borderline(), STARSConfig(safety_floor=0.1)).run("q")
    assert lowered.stats.refusal_reason == "veto"  # safety 0.2 clears 0.1, answering 0.03 stays under 0.04
    raised = Borderline()
    raised.capabilities = RewardCapabilities(components=("safety", "answering"), safety_floor=0.3)  # no own veto
    passes = STARSEngine(ScriptedBackend([["x"]], then=["x"]), raised, STARSConfig(safety_floor=0.1)).run("q")
    assert not passes.stats.refused


def test_a_declared_veto_the_reward_does_not_report_is_a_reward_failure() -> None:
    class Forgetful(Guarded):
        def score_components(self, conversation, responses):  # type: ignore[no-untyped-def]
            return RewardScores([1.0] * len(responses), {"safety": [1.0] * len(responses)})

    result = STARSEngine(ScriptedBackend([["x"]]), Forgetful(), STARSConfig(reward_error_action="refuse")).run("q")
    assert result.stats.refused and result.stats.refusal_reason == "reward_error"


def test_make_candidate_marks_eos_as_the_draft_end() -> None:
    assert make_candidate("ab<eos>").finish_reason == "eos"
    assert make_candidate("abc", max_tokens=2).finish_reason == "length"
