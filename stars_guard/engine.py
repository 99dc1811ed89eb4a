"""The STARS loop: draft K segment candidates, score them, accept the first that passes.

Pure algorithm over the `Backend` and `RewardModel` protocols; no torch or HTTP here. The engine
is a generator of events so every caller (CLI, LangChain model, server) sees the same decisions
in order, and rejected text never leaves it: only `TextEmitted` carries answer text.
"""

from __future__ import annotations

import math
import numbers
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from stars_guard.capabilities import generation_capabilities, reward_capabilities
from stars_guard.config import AUTO_SEGMENT_SIZE, STARSConfig
from stars_guard.deadline import deadline_scope, is_deadline_error
from stars_guard.errors import ConfigError, RewardError
from stars_guard.events import CandidateJudged, Event, Finished, FinishReason, STARSResult, TextEmitted
from stars_guard.messages import ChatMessage, normalize_messages
from stars_guard.policy import AcceptanceRule, ThresholdSchedule
from stars_guard.protocols import (
    Backend,
    Candidate,
    Generation,
    LanguageAwareReward,
    OpenRequest,
    RewardModel,
    backend_retries,
    cache_alignment,
    constraint_support,
    draft_segment,
    score_conversation,
)
from stars_guard.round_sizing import AdaptiveRounds, RoundCosts
from stars_guard.stats import EndedBy, RefusalReason, STARSStats
from stars_guard.stops import StopScanner
from stars_guard.tools import (
    OutputConstraint,
    open_call_start,
    plain_turns,
    streamable_end,
    strip_tool_calls,
    tool_call_spans,
)


@dataclass(frozen=True, slots=True)
class _Judged:
    """A candidate after stop-string cutting, with its reward."""

    candidate: Candidate
    text: str  # what the candidate adds to the answer (cut at a stop string)
    trim_to: int | None  # a stop string began in held-back accepted text: the answer ends here
    tokens: int
    finished: bool
    reward: float
    safety: float  # what the veto reads: the reward's safety component, else the reward
    attempt: int
    in_call: bool = False  # it writes part of a tool call (judged per `guard_tool_calls`)
    stopped: bool = False  # a client stop string cut it (the answer ends with it)
    under_own_floor: bool = False  # one of the reward's own vetoes (`RewardCapabilities.vetoes`) fired


_ENDED_BY: dict[FinishReason, EndedBy] = {
    "length": "max_new_tokens",
    "refusal": "refusal",
    "time_budget": "time_budget",
}


class _OutOfTime(Exception):
    """The request's deadline passed inside a backend or reward call (see `stars_guard.deadline`)."""


class STARSEngine:
    """Runs STARS for one backend and reward model. Thread-safe if its backend and reward are."""

    def __init__(
        self,
        backend: Backend,
        reward: RewardModel,
        config: STARSConfig | None = None,
        round_costs: RoundCosts | None = None,
    ) -> None:
        self.backend = backend
        self.reward = reward
        self.config = config or STARSConfig()
        # What a round of k candidates costs on this backend (`segment_budget="adaptive"`): pass
        # one `RoundCosts` to every engine over the same backend to learn it across requests.
        self.round_costs = round_costs or RoundCosts()

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
        constraint: OutputConstraint | None = None,
        **overrides: Any,
    ) -> Iterator[Event]:
        """Yield decisions and accepted text as they happen, then `Finished`.

        `overrides` are `STARSConfig` fields for this call only (validated); `stop` lists strings
        that end the answer (the stop string itself is not emitted). `constraint` says what the
        answer must look like (tool calls, a JSON schema: `stars_guard.tools`); the backend drafts
        under it where its capabilities say it can (`BackendCapabilities.constraints`).
        """
        config = self.config.with_overrides(**overrides)
        turns = normalize_messages(messages)
        run = _Run(self.backend, self.reward, config, turns, StopScanner(stop), constraint, self.round_costs)
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
        constraint: OutputConstraint | None = None,
        round_costs: RoundCosts | None = None,
    ) -> None:
        self.backend = backend
        self.reward = reward
        self.config = config
        self.turns = turns
        self.stops = stops
        # What the reward judges an answer in: every turn, tool calls and results in the text format.
        self.conversation = tuple(plain_turns(turns, constraint))
        self.safety_floor = resolve_safety_floor(config, reward)
        # The reward's own vetoes, each at its calibrated floor: `safety_floor` never moves them,
        # and only turning the veto off (None) turns them off.
        self.own_vetoes = dict(reward_capabilities(reward).vetoes) if config.safety_floor is not None else {}
        self.stats = STARSStats()
        self.text = ""
        self.streamed = 0  # characters of self.text already emitted
        self.started = time.perf_counter()
        # Every backend and reward call runs under this deadline (`stars_guard.deadline`): an HTTP
        # call that would outlive the budget is cut at it, not at its own read timeout.
        budget = config.time_budget_s
        self.deadline = None if budget is None else time.monotonic() + budget
        self.rng = random.Random(config.seed)
        # Greedy drafts are deterministic: one candidate per segment, judged once.
        self.greedy = config.temperature == 0.0
        self.attempts_per_segment = 1 if self.greedy else config.max_attempts
        adaptive = config.segment_budget == "adaptive" and not self.greedy
        self.adaptive = AdaptiveRounds(round_costs or RoundCosts()) if adaptive else None
        self.constraint = constraint
        # With tools bound, tool-call blocks are found in the answer: judged per `guard_tool_calls`,
        # and never streamed until they close (an unclosed one is dropped at the end).
        self.tool_calls = constraint is not None and constraint.kind == "tool_calls"
        self.whole_answers = False  # the backend enforces the constraint on whole answers only

    # The loop -----------------------------------------------------------------------------------

    def events(self) -> Iterator[Event]:
        config = self.config
        refusal = self._language_refusal()
        if refusal is not None:
            yield from self._refuse(0, refusal)
            self.stats.ended_by = "refusal"
            self.stats.elapsed_s = time.perf_counter() - self.started
            yield Finished(STARSResult(self.text, self.stats, "refusal", self.backend.model_name))
            return
        enforced = self._enforced_constraint()
        with deadline_scope(self.deadline):
            generation = self.backend.open(
                OpenRequest(
                    self.turns,
                    max_new_tokens=config.max_new_tokens,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    seed=config.seed,
                    constraint=enforced,
                )
            )
        try:
            if config.segmentation == "entropy" and not generation_capabilities(generation).entropy_segments:
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
            if finish != "stop":  # "stop" said by the segment that ended it: EOS or a stop string
                self.stats.ended_by = _ENDED_BY[finish]
        finally:
            self._sync_backend_counters(generation)
            generation.close()
        self.stats.elapsed_s = time.perf_counter() - self.started
        yield Finished(STARSResult(self.text, self.stats, finish, self.backend.model_name))

    def _language_refusal(self) -> RefusalReason | None:
        """Check the request's language against the ones the reward declares it reads (before any
        drafting): 'language' when the policy refuses a request in another, 'reward_error' when the
        check failed and the failure policy refuses (or `RewardError` when it raises), else None."""
        if not reward_capabilities(self.reward).languages:
            return None
        try:
            with deadline_scope(self.deadline):
                found = cast(LanguageAwareReward, self.reward).unsupported_language(self.conversation)
        except Exception as exc:
            action = self._reward_failed(exc, "could not tell the request's language")
            return None if action == "fail_open" else "reward_error"
        self.stats.guard_language = "supported" if found is None else "unsupported"
        return "language" if found is not None and self.config.unsupported_language == "refuse" else None

    def _enforced_constraint(self) -> OutputConstraint | None:
        """The constraint to draft under, or None; refuse one the answer needs but the backend cannot hold.

        Tool calls under 'auto' may be drafted free where the backend has no grammar: the answer is
        still read for calls, and a malformed one is reported as invalid, never executed.
        """
        constraint = self.constraint
        if constraint is None:
            return None
        support = constraint_support(self.backend, constraint)
        if support == "none":
            if constraint.kind == "tool_calls" and not constraint.required:
                return None
            what = "a JSON schema" if constraint.kind == "json_schema" else "a forced tool call"
            raise ConfigError(
                f"backend {self.backend.model_name!r} cannot draft under {what}: use a backend with a grammar "
                "(local, hf:..., llamacpp:...) or one whose server takes structured-output parameters"
            )
        self.whole_answers = support == "whole"
        return constraint

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
        # A server's grammar starts at each request's first token: such a backend drafts whole answers.
        budget = remaining if self.whole_answers else min(self._segment_length(generation), remaining)
        round_cap = 1 if self.greedy else config.round_size(segment_index, final=budget >= remaining)
        round_size = round_cap
        attempts = 0
        best: _Judged | None = None  # best candidate under the floor rule, for the fallback
        out_of_time = False
        while attempts < self.attempts_per_segment:
            if self._out_of_time():
                out_of_time = True
                break
            try:
                if self.adaptive is not None:
                    round_size = self.adaptive.size(round_cap, first_segment=segment_index == 0)
                round_started = time.perf_counter()
                drafts = self._draft(generation, min(round_size, self.attempts_per_segment - attempts), budget)
                self.stats.tokens_sampled += sum(candidate.num_tokens for candidate in drafts)
                judged = self._score(drafts, attempts)
                if self.adaptive is not None and segment_index > 0:  # the first segment's also pay for the prefill
                    self.adaptive.costs.observe(len(drafts), budget, time.perf_counter() - round_started)
            except _OutOfTime:  # the budget ran out inside a call: this round's drafts are never emitted
                out_of_time = True
                break
            if judged is None:  # the reward failed and the policy says refuse
                yield from self._refuse(segment_index, "reward_error")
                return "refusal"
            schedule.observe([item.reward for item in judged if not math.isnan(item.reward)])
            if self.adaptive is not None:
                self.adaptive.observe([self._would_pass(item, schedule) for item in judged])
            round_best: _Judged | None = None
            ordered, eligible = self._judging_order(judged)
            for item in ordered:
                attempts += 1
                threshold = schedule.threshold(self.stats.tokens_emitted + item.tokens)
                vetoed = self._vetoed(item)
                # A NaN reward only comes from fail-open (the scorer failed): the text goes out unscored.
                passes = math.isnan(item.reward) or (
                    not vetoed and item.attempt in eligible and self._clears(item, acceptance, threshold)
                )
                self.stats.candidates_sampled += 1
                self.stats.tool_call_candidates += item.in_call
                self.stats.stop_string_cuts += item.stopped
                self.stats.stop_cut_to_empty += item.stopped and not item.text and item.trim_to is None
                yield self._decision(segment_index, item, threshold, passes, False, vetoed)
                if passes:
                    self.stats.segments_accepted += 1
                    return (yield from self._emit(generation, item, segment_index))
                self.stats.candidates_rejected += 1
                if vetoed:
                    self.stats.candidates_vetoed += 1
                elif item.attempt in eligible and (best is None or item.reward > best.reward):
                    best = round_best = item
            if round_best is not None:
                generation.retain(round_best.candidate)
        if best is not None and config.fallback == "best":
            self.stats.segments_fallback += 1
            self.stats.candidates_rejected -= 1  # it was counted as rejected when judged
            threshold = schedule.threshold(self.stats.tokens_emitted + best.tokens)
            yield self._decision(segment_index, best, threshold, False, True, False)
            finish = yield from self._emit(generation, best, segment_index)
            return "time_budget" if out_of_time and finish is None else finish
        if out_of_time and attempts == 0:
            return "time_budget"
        reason: RefusalReason = "veto" if best is None and self.stats.candidates_vetoed else "no_candidate"
        yield from self._refuse(segment_index, reason)
        return "refusal"

    # Steps --------------------------------------------------------------------------------------

    def _decision(
        self, segment_index: int, item: _Judged, threshold: float, accepted: bool, fallback: bool, vetoed: bool
    ) -> CandidateJudged:
        safety = None if self.safety_floor is None else item.safety
        return CandidateJudged(
            segment_index,
            item.attempt,
            item.reward,
            threshold,
            accepted,
            fallback,
            item.tokens,
            item.text,
            vetoed,
            safety,
            "tool_call" if item.in_call else "text",
        )

    def _segment_length(self, generation: Generation) -> int:
        """`segment_size`; for 'auto', where the backend caches in blocks, the tokens that make the next
        round's prompt end one token past a block boundary, else AUTO_SEGMENT_SIZE.

        One past, not on it: a server computes a prompt's last token in any case (it needs its
        logits), so vLLM caps a cache hit at the prompt minus one token and a prompt that ended on a
        boundary would recompute its whole last block (measured: 32 tokens a round).
        """
        size = self.config.segment_size
        if size != "auto":
            return size
        alignment = cache_alignment(generation)
        if alignment is None:
            return AUTO_SEGMENT_SIZE
        block, prompt = alignment
        length = block - (prompt - 1) % block
        # A sliver of a block is too short to judge: run on by whole blocks. Blocks under
        # AUTO_SEGMENT_SIZE (a cache that matches single tokens) keep segments that long.
        shortest = max(1, block // 4) if block >= AUTO_SEGMENT_SIZE else AUTO_SEGMENT_SIZE
        if length < shortest:
            length += block * math.ceil((shortest - length) / block)
        return length

    def _would_pass(self, item: _Judged, schedule: ThresholdSchedule) -> bool:
        """Whether a candidate clears the veto and the hard threshold, judged or not: the pass
        rate that sizes the next rounds (`segment_budget="adaptive"`)."""
        if math.isnan(item.reward):
            return True
        threshold = schedule.threshold(self.stats.tokens_emitted + item.tokens)
        return not self._vetoed(item) and item.reward >= threshold

    def _clears(self, item: _Judged, acceptance: AcceptanceRule, threshold: float) -> bool:
        """The threshold test; a tool call's segments skip it unless `guard_tool_calls='steer'`."""
        if item.in_call and self.config.guard_tool_calls != "steer":
            return True
        return acceptance.accepts(item.reward, threshold)

    def _judging_order(self, judged: list[_Judged]) -> tuple[list[_Judged], set[int]]:
        """The round in judging order, and the attempts that may be accepted (or kept as fallback).

        Index order ('first'), or highest reward first ('best'; unscored fail-open drafts last).
        A round that writes only tool-call text follows `tool_call_selection="consensus"`: the text
        most of the round's unvetoed candidates agree on (`_agreeing`) is judged first and, where
        two or more agree, only that text may be accepted. A safety reward cannot read whether an argument is
        the one the user asked for (`{"input": 100}` for "magic_function(3)" read 0.005 higher, under
        the threshold's noise), and the model's own majority can. Each is still judged (threshold and
        veto), so a vetoed or failing candidate is never chosen for agreeing with others; a round
        whose majority fails is redrawn.
        """
        if self.config.round_selection == "first":
            ordered = judged
        else:
            ordered = sorted(
                judged, key=lambda item: -math.inf if math.isnan(item.reward) else item.reward, reverse=True
            )
        if self.config.tool_call_selection != "consensus" or not all(item.in_call for item in judged):
            return ordered, {item.attempt for item in ordered}
        voters = [_consensus_key(item.text) for item in judged if not self._vetoed(item)]
        votes = {item.attempt: _agreeing(_consensus_key(item.text), voters) for item in judged}
        most = max(votes.values(), default=0)
        ordered = sorted(ordered, key=lambda item: votes[item.attempt], reverse=True)  # stable
        if most <= 1:  # no two candidates that may pass agree: no majority to follow
            return ordered, {item.attempt for item in ordered}
        return ordered, {attempt for attempt, count in votes.items() if count == most}

    def _draft(self, generation: Generation, count: int, budget: int) -> list[Candidate]:
        try:
            with deadline_scope(self.deadline):
                cut = self.config.entropy_threshold if self.config.segmentation == "entropy" else None
                return draft_segment(generation, count, budget, cut)  # entropy cuts checked on open
        except Exception as exc:
            if is_deadline_error(exc):
                raise _OutOfTime from exc
            raise

    def _score(self, drafts: list[Candidate], attempts_so_far: int) -> list[_Judged] | None:
        """Cut each draft at a stop string, then score all of them in one reward call.

        Returns None when the reward failed and the policy is fail-closed with a refusal.
        """
        cut: list[tuple[Candidate, str, int | None, int, bool]] = []
        stopped: list[bool] = []
        responses: list[str] = []
        in_call: list[bool] = []
        for candidate in drafts:
            combined = self.text + candidate.text
            stop_at = self.stops.find(combined, len(self.text))
            if stop_at is None:
                text, trim_to, tokens = candidate.text, None, candidate.text_tokens
                # An empty draft that did not hit EOS could never make progress: treat it as the end.
                finished = candidate.finish_reason == "eos" or candidate.num_tokens == 0
                responses.append(combined)
                stopped.append(False)
            else:
                offset = stop_at - len(self.text)
                text = candidate.text[: max(offset, 0)]
                trim_to = stop_at if offset < 0 else None
                tokens = candidate.tokens_covering(max(offset, 0))
                finished = True
                responses.append(combined[:stop_at])
                stopped.append(True)
            cut.append((candidate, text, trim_to, tokens, finished))
            in_call.append(self.tool_calls and self._writes_call(responses[-1]))
        if self.tool_calls and self.config.guard_tool_calls == "off":
            responses = [strip_tool_calls(response) for response in responses]
        scores = self._rewards(responses)
        if scores is None:
            return None
        rewards, safeties, under_own = scores
        return [
            _Judged(candidate, text, trim_to, tokens, finished, reward, safety, attempts_so_far + index + 1, *flags)
            for index, ((candidate, text, trim_to, tokens, finished), reward, safety, *flags) in enumerate(
                zip(cut, rewards, safeties, in_call, stopped, under_own, strict=True)
            )
        ]

    def _writes_call(self, response: str) -> bool:
        """Whether the text a candidate adds to `response` lies (partly) inside a tool-call block,
        or adds nothing but the end of the answer (or whitespace) right after one."""
        new_from = len(self.text)
        spans = tool_call_spans(response)
        if any(end > new_from for _, end in spans):
            return True
        return not response[new_from:].strip() and bool(spans) and not response[spans[-1][1] :].strip()

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
            self.stats.ended_by = "stop_string" if item.stopped else "eos"
            return "stop"
        with deadline_scope(self.deadline):
            generation.commit(item.candidate)
        safe = len(self.text) - self.stops.holdback(self.text)
        if self.tool_calls:
            safe = min(safe, streamable_end(self.text))
        if safe > self.streamed:
            yield TextEmitted(segment_index, self.text[self.streamed : safe])
            self.streamed = safe
        return None

    def _flush(self) -> Iterator[Event]:
        open_at = open_call_start(self.text) if self.tool_calls else None
        if open_at is not None:  # a call the answer ended inside: never complete, never emitted
            self.text = self.text[:open_at]
            self.stats.tool_calls_dropped += 1
        if len(self.text) > self.streamed:
            yield TextEmitted(-1, self.text[self.streamed :])
            self.streamed = len(self.text)

    def _refuse(self, segment_index: int, reason: RefusalReason) -> Iterator[Event]:
        """End the answer with the refusal message (after any text already accepted)."""
        self.stats.refused = True
        self.stats.refusal_reason = reason
        yield from self._flush()
        separator = " " if self.text and not self.text[-1].isspace() else ""
        refusal = separator + self.config.refusal_message
        self.text += refusal
        self.streamed = len(self.text)
        yield TextEmitted(segment_index, refusal)

    def _rewards(self, responses: list[str]) -> tuple[list[float], list[float], list[bool]] | None:
        """One reward call, validated, with the configured failure policy: (rewards, safety scores,
        whether one of the reward's own vetoes fired).

        Every score enters the engine here. A scorer that raises, answers the wrong number of
        scores, or answers anything but a finite real number (NaN, inf, a string) has failed:
        fail_closed raises `RewardError` or returns None (refuse); fail_open gives NaN scores, which
        the judging loop lets through unscored, counted in `reward_errors`.
        """
        self.stats.reward_calls += 1
        try:
            with deadline_scope(self.deadline):
                scores = score_conversation(self.reward, self.conversation, responses)
            rewards = checked_scores(self.reward.name, "reward", scores.reward, len(responses))
            safety = scores.safety
            safeties = rewards if safety is None else checked_scores(self.reward.name, "safety", safety, len(responses))
            under_own = [False] * len(responses)
            for name, floor in self.own_vetoes.items():
                values = scores.components.get(name)
                if values is None:  # a veto the reward declared but did not report: fail, never pass unread
                    raise RewardError(
                        f"reward model {self.reward.name!r} declares a veto on {name!r} but did not report it"
                    )
                checked = checked_scores(self.reward.name, name, values, len(responses))
                under_own = [hit or value < floor for hit, value in zip(under_own, checked, strict=True)]
            return rewards, safeties, under_own
        except Exception as exc:
            if is_deadline_error(exc):  # out of time, not a failed scorer: never a reason to fail open
                raise _OutOfTime from exc
            if self._reward_failed(exc, "failed") == "refuse":
                return None
            unscored = [math.nan] * len(responses)
            return unscored, unscored, [False] * len(responses)

    def _reward_failed(self, exc: Exception, what: str) -> Literal["fail_open", "refuse"]:
        """Count a failed reward call and apply the failure policy: go on unscored ('fail_open'),
        end with the refusal ('refuse'), or raise `RewardError` (fail_closed with 'raise')."""
        self.stats.reward_errors += 1
        if self.config.on_reward_error == "fail_open":
            return "fail_open"
        if self.config.reward_error_action == "refuse":
            return "refuse"
        if isinstance(exc, RewardError):
            raise exc
        raise RewardError(f"reward model {self.reward.name!r} {what}: {exc}") from exc

    def _empty_reward(self) -> float | None:
        """R(prompt, ''), needed only by the absolute schedule (on a reward failure: tau = r_thr)."""
        if self.config.threshold_mode != "absolute":
            return None
        try:
            scores = self._rewards([""])
        except _OutOfTime:
            return self.config.reward_threshold
        if scores is None or math.isnan(scores[0][0]):
            return self.config.reward_threshold
        return scores[0][0]

    def _vetoed(self, item: _Judged) -> bool:
        """Under the safety floor, or under one of the reward's own veto floors: never emitted.
        An unscored (fail-open) candidate cannot be vetoed."""
        if item.under_own_floor:
            return True
        return self.safety_floor is not None and not math.isnan(item.safety) and item.safety < self.safety_floor

    def _out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _sync_backend_counters(self, generation: Generation) -> None:
        self.stats.llm_calls = generation.llm_calls
        self.stats.llm_forward_tokens = generation.llm_forward_tokens
        self.stats.backend_retries = backend_retries(generation)


def _consensus_key(text: str) -> str:
    """What two tool-call segments agree on: their text without whitespace (`{"a": 3}` is `{"a":3}`)."""
    return "".join(text.split())


def _agreeing(key: str, voters: list[str]) -> int:
    """How many voters agree with `key`: the same text, or one that stops earlier or runs on
    (`3}` and `3}}</tool_call>` agree; `3}` and `100}` do not): segments of one call end wherever
    their tokens did, so whole-text equality would split a majority into singletons."""
    return sum(key.startswith(voter) or voter.startswith(key) for voter in voters)


def resolve_safety_floor(config: STARSConfig, reward: RewardModel) -> float | None:
    """The veto floor in force: the configured number, the reward's calibrated floor for 'auto'
    (none for a reward that ships none), or None when the veto is off.

    The calibrated floor is read from the reward's declared capabilities, which every wrapper
    passes on (`stars_guard.capabilities`): never discovered by attribute lookup."""
    if config.safety_floor != "auto":
        return config.safety_floor
    return reward_capabilities(reward).safety_floor


def checked_scores(scorer: str, what: str, values: Sequence[Any], expected: int) -> list[float]:
    """`values` as floats, or `RewardError` when a scorer's answer cannot be trusted as a score."""
    if len(values) != expected:
        raise RewardError(f"reward model {scorer!r} returned {len(values)} {what} scores for {expected} texts")
    floats: list[float] = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise RewardError(
                f"reward model {scorer!r} returned {value!r} as the {what} score of text {index}: "
                "a score must be a finite number"
            )
        floats.append(float(value))
    return floats
