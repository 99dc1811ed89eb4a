"""The STARS loop on a scripted backend and reward: decisions, fallbacks, stops, budgets, stats."""

from __future__ import annotations

import itertools
import math

import pytest

from stars_guard import STARSConfig, STARSEngine
from stars_guard.errors import RewardError
from stars_guard.events import CandidateJudged, Finished, TextEmitted
from stars_guard.messages import ChatMessage
from tests.doubles import ScriptedBackend, ScriptedReward, reward_table


def absolute(**values: object) -> STARSConfig:
    """The paper's schedule with tau pinned at r_thr (alpha=1), so thresholds are easy to read."""
    return STARSConfig(threshold_mode="absolute", reward_threshold=0.5, alpha=1.0, **values)


def run(rounds, reward_fn, config: STARSConfig, **kwargs):
    backend = ScriptedBackend(rounds)
    reward = ScriptedReward(reward_fn)
    events = list(STARSEngine(backend, reward, config).stream("question?", **kwargs))
    result = events[-1].result
    return result, events, backend.generation, reward


def judged(events) -> list[CandidateJudged]:
    return [event for event in events if isinstance(event, CandidateJudged)]


def test_first_passing_candidate_in_index_order_is_accepted():
    rewards = reward_table({"aa": 0.1, "bb": 0.9, "cc": 0.95}, default=1.0)
    config = absolute(segment_size=2, round_selection="first")
    result, events, generation, _ = run([["aa", "bb", "cc", "dd"], ["x<eos>"] * 4], rewards, config)
    decisions = judged(events)
    assert [(d.text, d.accepted) for d in decisions[:2]] == [("aa", False), ("bb", True)]
    assert "cc" not in [d.text for d in decisions]  # never judged: the round stopped at "bb"
    assert generation.committed == ["bb"]
    assert result.text.startswith("bb")
    assert result.stats.candidates_sampled == result.stats.segments_accepted + result.stats.candidates_rejected


def test_rejected_text_is_never_emitted_and_fallback_takes_the_best():
    rewards = reward_table({"r1 ": 0.2, "r2 ": 0.4, "r3 ": 0.1, "r4 ": 0.3, "end": 0.9})
    config = absolute(segment_size=4, candidates_per_round=2, max_attempts=4)
    result, events, generation, _ = run([["r1 ", "r2 "], ["r3 ", "r4 "], ["end<eos>", "zz"]], rewards, config)
    emitted = "".join(event.text for event in events if isinstance(event, TextEmitted))
    assert emitted == result.text == "r2 end"
    fallback = [d for d in judged(events) if d.fallback]
    assert len(fallback) == 1 and fallback[0].text == "r2 " and fallback[0].attempt == 2
    stats = result.stats
    assert (stats.segments_accepted, stats.segments_fallback) == (1, 1)
    assert stats.candidates_sampled == 5  # r1..r4 judged, then "end"
    assert stats.candidates_rejected == 3  # r1, r3, r4; r2 became the fallback
    assert stats.candidates_sampled == stats.segments_accepted + stats.candidates_rejected + stats.segments_fallback
    assert generation.committed == ["r2 "]  # the retained candidate from the first round
    for text in ("r1", "r3", "r4"):
        assert text not in result.text


def test_safety_floor_vetoes_everything_and_refuses():
    config = absolute(segment_size=4, candidates_per_round=2, max_attempts=2, safety_floor=0.3)
    result, events, _, _ = run(
        [["ok. ", "ok! "], ["bad1", "bad2"]], reward_table({"ok. ": 0.9, "bad1": 0.2, "bad2": 0.1}), config
    )
    assert result.stats.refused is True
    assert result.finish_reason == "refusal"
    assert result.text == "ok. " + config.refusal_message
    assert "bad" not in "".join(e.text for e in events if isinstance(e, TextEmitted))


def test_fallback_refuse_mode_refuses_instead_of_best():
    config = absolute(segment_size=4, candidates_per_round=2, max_attempts=2, fallback="refuse")
    result, _, _, _ = run([["meh1", "meh2"]], lambda text: 0.4, config)
    assert result.text == config.refusal_message
    assert result.stats.refused and result.stats.segments_fallback == 0


def test_stop_string_cuts_the_candidate_and_ends_the_answer():
    result, _, _, reward = run(
        [["Hello STOP more", "x" * 15]], lambda text: 1.0, absolute(segment_size=15), stop=["STOP"]
    )
    assert result.text == "Hello "
    assert result.finish_reason == "stop"
    assert result.stats.tokens_emitted == len("Hello ")  # one token per character in the script
    assert reward.calls[-1][1][0] == "Hello "  # the cut text is what gets scored


def test_stop_string_across_segments_is_held_back_then_removed():
    config = absolute(segment_size=6)
    result, events, _, _ = run([["abc EN", "zzzzzz"], ["D tail", "zzzzzz"]], lambda text: 1.0, config, stop=["END"])
    streamed = [event.text for event in events if isinstance(event, TextEmitted)]
    assert result.text == "abc "
    assert "".join(streamed) == "abc "
    assert all("EN" not in piece for piece in streamed)


def test_eos_ends_the_answer_without_continuing():
    result, _, generation, _ = run([["fin<eos>", "zzz"]], lambda text: 1.0, absolute(segment_size=8))
    assert result.finish_reason == "stop"
    assert result.text == "fin"
    assert result.stats.tokens_emitted == 3 and result.stats.tokens_sampled == 4 + 3
    assert generation.committed == []


def test_max_new_tokens_bounds_the_answer_and_the_last_segment_is_shorter():
    rounds = [["aaaa", "bbbb"], ["cccc", "dddd"], ["eeee", "ffff"]]
    result, _, _, _ = run(rounds, lambda text: 1.0, absolute(segment_size=4, candidates_per_round=2, max_new_tokens=10))
    assert result.text == "aaaaccccee"
    assert result.stats.tokens_emitted == 10
    assert result.finish_reason == "length"


def test_time_budget_settles_the_segment_in_progress_and_stops(monkeypatch):
    clock = itertools.chain([0.0, 0.0, 0.5], itertools.repeat(5.0))  # start, two checks in time, then out
    monkeypatch.setattr("stars_guard.engine.time.monotonic", lambda: next(clock))
    config = absolute(segment_size=4, candidates_per_round=1, max_attempts=8, time_budget_s=1.0)
    result, _, _, _ = run([["low1"], ["low2"]], reward_table({"low1": 0.2, "low2": 0.3}), config)
    assert result.finish_reason == "time_budget"
    assert result.text == "low2"  # the best of what was judged before the budget ran out
    assert result.stats.candidates_sampled == 2 and result.stats.segments_fallback == 1


def test_greedy_drafts_one_candidate_and_judges_it_once():
    result, events, generation, _ = run(
        [["only"], ["done<eos>"]], lambda text: 0.0, absolute(segment_size=5, temperature=0.0)
    )
    assert generation.drafted == ["only", "done"]
    assert [d.attempt for d in judged(events) if not d.fallback] == [1, 1]
    assert result.text == "onlydone"


def test_statistics_identities_and_keys():
    rewards = reward_table({"a1": 0.1, "a2": 0.7, "b1": 0.6}, default=1.0)
    result, events, generation, reward = run(
        [["a1", "a2", "a3"], ["b1", "b2", "b3"], ["c<eos>", "c", "c"]],
        rewards,
        absolute(segment_size=2, candidates_per_round=3),
    )
    stats = result.stats.as_dict()
    from stars_guard.stats import STATS_KEYS

    assert list(stats) == list(STATS_KEYS)
    assert (
        stats["candidates_sampled"]
        == stats["segments_accepted"] + stats["candidates_rejected"] + stats["segments_fallback"]
    )
    assert stats["tokens_sampled"] == sum(len(t) for t in generation.drafted) + 1  # + the EOS token
    assert stats["tokens_emitted"] == len(result.text)
    assert stats["llm_calls"] == 3 and stats["reward_calls"] == 3 + 1  # + R(prompt, "") for the absolute schedule
    assert stats["llm_forward_tokens"] == stats["prompt_tokens"] + stats["tokens_sampled"]
    assert math.isclose(stats["rejection_rate"], stats["candidates_rejected"] / stats["candidates_sampled"])
    assert stats["final_reward"] == judged(events)[-1].reward
    assert isinstance(stats["elapsed_s"], float) and stats["refused"] is False
    assert all(conversation == (ChatMessage("user", "question?"),) for conversation, _ in reward.calls)


def test_relative_threshold_needs_no_empty_reward_call():
    result, _, _, reward = run(
        [["aaa", "bbb"], ["x<eos>", "y<eos>"]],
        reward_table({"aaa": 1.0, "bbb": 3.0}, default=3.0),
        STARSConfig(segment_size=3, candidates_per_round=2),
    )
    assert all("" not in responses for _, responses in reward.calls)
    assert result.text.startswith("bbb")  # median of {1, 3} is 2: "aaa" fails, "bbb" passes


def test_reward_failure_fail_closed_raises_and_closes_the_generation():
    def broken(text: str) -> float:
        raise ConnectionError("reward service down")

    backend = ScriptedBackend([["aaaa", "bbbb"]])
    engine = STARSEngine(backend, ScriptedReward(broken), STARSConfig(segment_size=4, candidates_per_round=2))
    emitted = []
    with pytest.raises(RewardError, match="reward service down"):
        for event in engine.stream("question?"):
            emitted.append(event)
    assert not any(isinstance(event, TextEmitted) for event in emitted)
    assert backend.generation.closed


def test_reward_failure_fail_closed_can_refuse_instead():
    config = STARSConfig(segment_size=4, candidates_per_round=2, reward_error_action="refuse")
    result, _, _, _ = run([["aaaa", "bbbb"]], lambda text: 1 / 0, config)
    assert result.text == config.refusal_message and result.stats.refused
    assert result.stats.reward_errors == 1


def test_reward_failure_fail_open_emits_unscored_text_and_counts_it():
    config = STARSConfig(segment_size=4, candidates_per_round=2, max_new_tokens=8, on_reward_error="fail_open")
    result, _, _, _ = run([["aaaa", "bbbb"], ["cccc", "dddd"]], lambda text: 1 / 0, config)
    assert result.text == "aaaacccc"
    assert result.stats.reward_errors == 2
    assert result.stats.final_reward is None and result.stats.mean_accepted_reward is None


def test_interrupting_the_stream_closes_the_generation():
    backend = ScriptedBackend([["aaaa", "bbbb"], ["cccc", "dddd"]])
    stream = STARSEngine(backend, ScriptedReward(lambda text: 1.0), STARSConfig(segment_size=4)).stream("q?")
    next(stream)
    stream.close()
    assert backend.generation.closed


def test_keyboard_interrupt_mid_generation_propagates_and_closes():
    def interrupt() -> None:
        raise KeyboardInterrupt

    backend = ScriptedBackend([["aaaa", "bbbb"]], on_draft=interrupt)
    with pytest.raises(KeyboardInterrupt):
        STARSEngine(backend, ScriptedReward(lambda text: 1.0)).run("q?")
    assert backend.generation.closed


def test_config_overrides_apply_per_call_and_are_validated():
    backend = ScriptedBackend([["aaaa", "bbbb"]])
    engine = STARSEngine(backend, ScriptedReward(lambda text: 1.0), STARSConfig(segment_size=4))
    result = engine.run("q?", max_new_tokens=4, seed=3, temperature=0.5)
    assert result.stats.tokens_emitted == 4
    assert backend.opened[-1]["seed"] == 3 and backend.opened[-1]["temperature"] == 0.5
    assert engine.config.max_new_tokens == 256  # the engine's own config is untouched
    with pytest.raises(ValueError, match="segment_size"):
        engine.run("q?", segment_size=0)


def test_finished_is_the_last_event():
    _, events, _, _ = run([["a<eos>", "cd"]], lambda text: 1.0, absolute(segment_size=2))
    assert isinstance(events[-1], Finished)
    assert sum(isinstance(event, Finished) for event in events) == 1


def test_entropy_segmentation_needs_a_backend_with_logits():
    from stars_guard.errors import ConfigError

    backend = ScriptedBackend([["aaaa"]])
    with pytest.raises(ConfigError, match="segmentation='entropy'"):
        STARSEngine(backend, ScriptedReward(lambda text: 1.0), STARSConfig(segmentation="entropy")).run("q?")
    assert backend.generation.closed
