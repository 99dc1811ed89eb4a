"""The STARS loop: draft K segment candidates, score them, accept the first that passes.

Pure algorithm over the `Backend` and `RewardModel` protocols; no torch or HTTP here. The engine
is a generator of events so every caller (CLI, LangChain model, server) sees the same decisions
in order, and rejected text never leaves it: only `TextEmitted` carries answer text.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from stars_guard.config import STARSConfig
from stars_guard.errors import ConfigError, RewardError
from stars_guard.messages import ChatMessage, last_user_text, normalize_messages
from stars_guard.policy import AcceptanceRule, ThresholdSchedule
from stars_guard.protocols import Backend, Candidate, Generation, RewardModel
from stars_guard.stats import STARSStats
from stars_guard.stops import StopScanner

FinishReason = Literal["stop", "length", "refusal", "time_budget"]


@dataclass(frozen=True, slots=True)
class CandidateJudged:
    """One accept/reject decision. `text` is the candidate's text: never part of the answer unless accepted."""

    segment_index: int
    attempt: int
    reward: float
    threshold: float
    accepted: bool
    fallback: bool
    tokens: int
    text: str


@dataclass(frozen=True, slots=True)
class TextEmitted:
    """Answer text that passed the reward check, safe to show."""

    segment_index: int
    text: str


@dataclass(frozen=True, slots=True)
class STARSResult:
    """The finished answer."""

    text: str
    stats: STARSStats
    finish_reason: FinishReason
    model_name: str


@dataclass(frozen=True, slots=True)
class Finished:
    """Last event of a stream."""

    result: STARSResult


Event = CandidateJudged | TextEmitted | Finished


@dataclass(frozen=True, slots=True)
class _Judged:
    """A candidate after stop-string cutting, with its reward."""

    candidate: Candidate
    text: str  # what the candidate adds to the answer (cut at a stop string)
    trim_to: int | None  # a stop string began in held-back accepted text: the answer ends here
    tokens: int
    finished: bool
    reward: float
    attempt: int


class STARSEngine:
    """Runs STARS for one backend and reward model. Thread-safe if its backend and reward are."""

    def __init__(self, backend: Backend, reward: RewardModel, config: STARSConfig | None = None) -> None:
        self.backend = backend
        self.reward = reward
        self.config = config or STARSConfig()

    def run(self, messages: str | Iterable[ChatMessage | Mapping[str, object]], **overrides: Any) -> STARSResult:
        """Generate a whole answer; see `stream` for the arguments."""
        for event in self.stream(messages, **overrides):
            if isinstance(event, Finished):
                return event.result
        raise AssertionError("the engine stream ended without a result")  # pragma: no cover

    def stream(
        self,
        messages: str | Iterable[ChatMessage | Mapping[str, object]],
        *,
        stop: Sequence[str] | None = None,
        **overrides: Any,
    ) -> Iterator[Event]:
        """Yield decisions and accepted text as they happen, then `Finished`.

        `overrides` are `STARSConfig` fields for this call only (validated); `stop` lists strings
        that end the answer (the stop string itself is not emitted).
        """
        config = self.config.with_overrides(**overrides)
        turns = normalize_messages(messages)
        run = _Run(self.backend, self.reward, config, turns, StopScanner(stop))
        yield from run.events()


class _Run:
    """State of one request. Kept apart from the engine so the engine stays reusable and stateless."""

    def __init__(
        self,
        backend: Backend,
        reward: RewardModel,
        config: STARSConfig,
        turns: list[ChatMessage],
        stops: StopScanner,
    ) -> None:
        self.backend = backend
        self.reward = reward
        self.config = config
        self.turns = turns
        self.stops = stops
        self.prompt = last_user_text(turns)
        self.stats = STARSStats()
        self.text = ""
        self.streamed = 0  # characters of self.text already emitted
        self.started = time.perf_counter()
        self.rng = random.Random(config.seed)
        # Greedy drafts are deterministic: one candidate per segment, judged once.
        self.greedy = config.temperature == 0.0
        self.attempts_per_segment = 1 if self.greedy else config.max_attempts

    # The loop -----------------------------------------------------------------------------------

    def events(self) -> Iterator[Event]:
        config = self.config
        generation = self.backend.open(
            self.turns,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
        )
        try:
            if config.segmentation == "entropy" and not getattr(generation, "supports_entropy_segments", False):
                raise ConfigError(
                    f"segmentation='entropy' needs next-token logits, which backend {self.backend.model_name!r} "
                    "does not expose: use a local backend (local, hf:...) or segmentation='fixed'"
                )
            self.stats.prompt_tokens = generation.prompt_tokens
            schedule = ThresholdSchedule(config, self._empty_reward())
            acceptance = AcceptanceRule(config, self.rng)
            finish: FinishReason = "length"
            segment_index = 0
            while self.stats.tokens_emitted < config.max_new_tokens:
                outcome = yield from self._segment(generation, schedule, acceptance, segment_index)
                segment_index += 1
                if outcome is not None:
                    finish = outcome
                    break
            yield from self._flush()
        finally:
            self._sync_backend_counters(generation)
            generation.close()
        self.stats.elapsed_s = time.perf_counter() - self.started
        yield Finished(STARSResult(self.text, self.stats, finish, self.backend.model_name))

    def _segment(
        self,
        generation: Generation,
        schedule: ThresholdSchedule,
        acceptance: AcceptanceRule,
        segment_index: int,
    ) -> Iterator[Event]:
        """Settle one segment; return a finish reason when the answer ends with it."""
        config = self.config
        remaining = config.max_new_tokens - self.stats.tokens_emitted
        budget = min(config.segment_size, remaining)
        round_size = 1 if self.greedy else config.round_size(segment_index, final=budget >= remaining)
        attempts = 0
        best: _Judged | None = None  # best candidate under the floor rule, for the fallback
        out_of_time = False
        while attempts < self.attempts_per_segment:
            if self._out_of_time():
                out_of_time = True
                break
            drafts = self._draft(generation, min(round_size, self.attempts_per_segment - attempts), budget)
            self.stats.tokens_sampled += sum(candidate.num_tokens for candidate in drafts)
            judged = self._score(drafts, attempts)
            if judged is None:  # the reward failed and the policy says refuse
                yield from self._refuse(segment_index)
                return "refusal"
            schedule.observe([item.reward for item in judged if not math.isnan(item.reward)])
            round_best: _Judged | None = None
            for item in self._judging_order(judged):
                attempts += 1
                threshold = schedule.threshold(self.stats.tokens_emitted + item.tokens)
                if math.isnan(item.reward):  # fail-open: the reward failed, the text goes out unscored
                    passes = True
                else:
                    passes = self._above_floor(item.reward) and acceptance.accepts(item.reward, threshold)
                self.stats.candidates_sampled += 1
                yield CandidateJudged(
                    segment_index, item.attempt, item.reward, threshold, passes, False, item.tokens, item.text
                )
                if passes:
                    self.stats.segments_accepted += 1
                    return (yield from self._emit(generation, item, segment_index))
                self.stats.candidates_rejected += 1
                if self._above_floor(item.reward) and (best is None or item.reward > best.reward):
                    best = round_best = item
            if round_best is not None:
                generation.retain(round_best.candidate)
        if best is not None and config.fallback == "best":
            self.stats.segments_fallback += 1
            self.stats.candidates_rejected -= 1  # it was counted as rejected when judged
            threshold = schedule.threshold(self.stats.tokens_emitted + best.tokens)
            yield CandidateJudged(
                segment_index, best.attempt, best.reward, threshold, False, True, best.tokens, best.text
            )
            finish = yield from self._emit(generation, best, segment_index)
            return "time_budget" if out_of_time and finish is None else finish
        if out_of_time and attempts == 0:
            return "time_budget"
        yield from self._refuse(segment_index)
        return "refusal"

    # Steps --------------------------------------------------------------------------------------

    def _judging_order(self, judged: list[_Judged]) -> list[_Judged]:
        """Index order ('first'), or highest reward first ('best'; unscored fail-open drafts last)."""
        if self.config.round_selection == "first":
            return judged
        return sorted(judged, key=lambda item: -math.inf if math.isnan(item.reward) else item.reward, reverse=True)

    def _draft(self, generation: Generation, count: int, budget: int) -> list[Candidate]:
        if self.config.segmentation == "entropy":
            return generation.draft(count, budget, entropy_cut=self.config.entropy_threshold)  # type: ignore[call-arg]
        return generation.draft(count, budget)

    def _score(self, drafts: list[Candidate], attempts_so_far: int) -> list[_Judged] | None:
        """Cut each draft at a stop string, then score all of them in one reward call.

        Returns None when the reward failed and the policy is fail-closed with a refusal.
        """
        cut: list[tuple[Candidate, str, int | None, int, bool]] = []
        responses: list[str] = []
        for candidate in drafts:
            combined = self.text + candidate.text
            stop_at = self.stops.find(combined, len(self.text))
            if stop_at is None:
                text, trim_to, tokens = candidate.text, None, candidate.text_tokens
                # An empty draft that did not hit EOS could never make progress: treat it as the end.
                finished = candidate.finish_reason == "eos" or candidate.num_tokens == 0
                responses.append(combined)
            else:
                offset = stop_at - len(self.text)
                text = candidate.text[: max(offset, 0)]
                trim_to = stop_at if offset < 0 else None
                tokens = candidate.tokens_covering(max(offset, 0))
                finished = True
                responses.append(combined[:stop_at])
            cut.append((candidate, text, trim_to, tokens, finished))
        rewards = self._rewards(responses)
        if rewards is None:
            return None
        return [
            _Judged(candidate, text, trim_to, tokens, finished, float(reward), attempts_so_far + index + 1)
            for index, ((candidate, text, trim_to, tokens, finished), reward) in enumerate(
                zip(cut, rewards, strict=True)
            )
        ]

    def _emit(self, generation: Generation, item: _Judged, segment_index: int) -> Iterator[Event]:
        """Commit an accepted (or fallback) candidate and stream what is safe to show."""
        scored = not math.isnan(item.reward)
        if scored:
            self.stats.emitted_rewards.append(item.reward)
        self.stats.final_reward = item.reward if scored else None
        self.stats.tokens_emitted += item.tokens
        if item.trim_to is not None:
            self.text = self.text[: item.trim_to]
        else:
            self.text += item.text
        if item.finished:
            return "stop"
        generation.commit(item.candidate)
        safe = len(self.text) - self.stops.holdback(self.text)
        if safe > self.streamed:
            yield TextEmitted(segment_index, self.text[self.streamed : safe])
            self.streamed = safe
        return None

    def _flush(self) -> Iterator[Event]:
        if len(self.text) > self.streamed:
            yield TextEmitted(-1, self.text[self.streamed :])
            self.streamed = len(self.text)

    def _refuse(self, segment_index: int) -> Iterator[Event]:
        """End the answer with the refusal message (after any text already accepted)."""
        self.stats.refused = True
        yield from self._flush()
        separator = " " if self.text and not self.text[-1].isspace() else ""
        refusal = separator + self.config.refusal_message
        self.text += refusal
        self.streamed = len(self.text)
        yield TextEmitted(segment_index, refusal)

    def _rewards(self, responses: list[str]) -> list[float] | None:
        """One reward call, with the configured failure policy.

        fail_closed: raise `RewardError` or return None (refuse); fail_open: NaN rewards, which
        the judging loop lets through unscored and the statistics count in `reward_errors`.
        """
        self.stats.reward_calls += 1
        try:
            rewards = [float(value) for value in self.reward.score(self.prompt, responses)]
            if len(rewards) != len(responses):
                raise RewardError(
                    f"reward model {self.reward.name!r} returned {len(rewards)} scores for {len(responses)} texts"
                )
            return rewards
        except Exception as exc:
            self.stats.reward_errors += 1
            if self.config.on_reward_error == "fail_open":
                return [math.nan] * len(responses)
            if self.config.reward_error_action == "refuse":
                return None
            if isinstance(exc, RewardError):
                raise
            raise RewardError(f"reward model {self.reward.name!r} failed: {exc}") from exc

    def _empty_reward(self) -> float | None:
        """R(prompt, ''), needed only by the absolute schedule (on a reward failure: tau = r_thr)."""
        if self.config.threshold_mode != "absolute":
            return None
        rewards = self._rewards([""])
        if rewards is None or math.isnan(rewards[0]):
            return self.config.reward_threshold
        return rewards[0]

    def _above_floor(self, reward: float) -> bool:
        floor = self.config.safety_floor
        return floor is None or reward >= floor

    def _out_of_time(self) -> bool:
        budget = self.config.time_budget_s
        return budget is not None and time.perf_counter() - self.started >= budget

    def _sync_backend_counters(self, generation: Generation) -> None:
        self.stats.llm_calls = generation.llm_calls
        self.stats.llm_forward_tokens = generation.llm_forward_tokens
        self.stats.backend_retries = int(getattr(generation, "backend_retries", 0))
