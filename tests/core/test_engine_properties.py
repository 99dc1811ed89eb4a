"""Property: the answer is exactly the accepted segments, and nothing rejected ever leaks."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stars_guard import STARSConfig, STARSEngine
from stars_guard.events import CandidateJudged, TextEmitted
from stars_guard.protocols import OpenRequest
from tests.doubles import ScriptedReward, make_candidate


class DrawnGeneration:
    """Drafts candidates that start with a unique marker character, with rewards and EOS drawn by hypothesis.

    The marker survives any truncation, so "this candidate's text is in the answer" is exact.
    """

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.counter = itertools.count()
        self.rewards: dict[str, float] = {}
        self.latest: list = []
        self.prompt_tokens, self.llm_calls, self.llm_forward_tokens = 3, 0, 3

    def draft(self, num_candidates: int, max_tokens: int):
        self.llm_calls += 1
        self.latest = []
        for _ in range(num_candidates):
            marker = chr(0x4E00 + next(self.counter))
            self.rewards[marker] = self.data.draw(st.floats(0.0, 1.0), label=marker)
            text = marker + "." * self.data.draw(st.integers(0, 6), label="length")
            eos = self.data.draw(st.booleans(), label="eos")
            self.latest.append(make_candidate(text + ("<eos>" if eos else ""), max_tokens))
        self.llm_forward_tokens += sum(candidate.num_tokens for candidate in self.latest)
        return self.latest

    def retain(self, candidate) -> None:
        pass

    def commit(self, candidate) -> None:
        pass

    def close(self) -> None:
        pass


class DrawnBackend:
    model_name = "drawn"

    def __init__(self, data: st.DataObject) -> None:
        self.generation = DrawnGeneration(data)

    def open(self, request: OpenRequest) -> DrawnGeneration:
        return self.generation


configs = st.builds(
    STARSConfig,
    segment_size=st.integers(1, 8),
    candidates_per_round=st.integers(1, 4),
    max_attempts=st.integers(1, 6),
    max_new_tokens=st.integers(1, 40),
    threshold_mode=st.sampled_from(["relative", "absolute"]),
    reward_threshold=st.just(0.6),
    alpha=st.floats(0.0, 1.0),
    acceptance=st.sampled_from(["hard", "soft"]),
    fallback=st.sampled_from(["best", "refuse"]),
    safety_floor=st.one_of(st.none(), st.floats(0.0, 0.5)),
    seed=st.integers(0, 100),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, data=st.data())
def test_emitted_text_is_exactly_the_accepted_segments(config: STARSConfig, data: st.DataObject) -> None:
    backend = DrawnBackend(data)

    def reward(text: str) -> float:
        markers = [char for char in text if char in backend.generation.rewards]
        return backend.generation.rewards[markers[-1]] if markers else 0.0

    events = list(STARSEngine(backend, ScriptedReward(reward), config).stream("q"))
    result = events[-1].result
    streamed = "".join(event.text for event in events if isinstance(event, TextEmitted))
    decisions = [event for event in events if isinstance(event, CandidateJudged)]
    chosen = [d for d in decisions if d.accepted or d.fallback]
    expected = "".join(d.text for d in chosen)
    if result.stats.refused:
        expected += (" " if expected else "") + config.refusal_message
    assert streamed == result.text == expected
    chosen_markers = {d.text[:1] for d in chosen}
    for decision in decisions:
        if decision.text and decision.text[:1] not in chosen_markers:
            assert decision.text[:1] not in result.text, "a rejected candidate leaked into the answer"
    if config.safety_floor is not None:
        assert all(d.reward >= config.safety_floor for d in chosen)
    stats = result.stats
    assert stats.candidates_sampled == stats.segments_accepted + stats.candidates_rejected + stats.segments_fallback
    assert stats.tokens_emitted <= config.max_new_tokens
    assert stats.llm_forward_tokens == stats.prompt_tokens + stats.tokens_sampled
