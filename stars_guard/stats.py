"""Per-response statistics: the `stars` block of every answer (docs/architecture.md, Statistics)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

# Why an answer ended with the refusal message: every candidate of a segment was under the safety
# floor ('veto'), none passed and the fallback is 'refuse' ('no_candidate'), or the reward failed
# under fail_closed with reward_error_action='refuse' ('reward_error'), or the request is written in
# a language the reward was not calibrated for, under unsupported_language='refuse' ('language').
RefusalReason = Literal["veto", "no_candidate", "reward_error", "language"]
# What ended an answer, finer than the finish reason: "stop" is either the model's EOS or a client's
# stop string, "length" is max_new_tokens, and the rest are the finish reasons of the same name.
EndedBy = Literal["eos", "stop_string", "max_new_tokens", "refusal", "time_budget"]

STATS_KEYS: tuple[str, ...] = (
    "prompt_tokens",
    "segments_accepted",
    "segments_fallback",
    "candidates_sampled",
    "candidates_rejected",
    "candidates_vetoed",
    "rejection_rate",
    "tokens_sampled",
    "tokens_emitted",
    "reward_calls",
    "llm_calls",
    "llm_forward_tokens",
    "mean_accepted_reward",
    "final_reward",
    "refused",
    "refusal_reason",
    "elapsed_s",
    "backend_retries",
    "reward_errors",
    "tool_call_candidates",
    "tool_calls_dropped",
    "stop_string_cuts",
    "stop_cut_to_empty",
    "ended_by",
    "guard_language",
)


@dataclass
class STARSStats:
    """Counters of one response.

    `candidates_sampled` counts judged candidates (accepted + rejected + fallback-chosen); drafts
    left unjudged after a round's first acceptance still cost compute and count in `tokens_sampled`.
    `mean_accepted_reward` averages the rewards of the segments that entered the answer.
    `candidates_vetoed` counts rejected candidates whose safety score was under the floor (never
    emitted, not even as fallback); they are also in `candidates_rejected`.
    With tools bound, `tool_call_candidates` counts judged candidates that wrote part of a tool
    call (judged as `guard_tool_calls` says), and `tool_calls_dropped` the calls still open when
    the answer ended (a refusal, the token or time budget): held back, never emitted.
    `stop_string_cuts` counts judged candidates that a client stop string cut, and
    `stop_cut_to_empty` those it cut to nothing: a stop list can end an answer before the model
    writes a word (`stop: ["I'm", "Sorry"]` against a model that declines), and that is reported,
    never a silent success. `ended_by` says what ended the answer (`EndedBy`). Stop strings cut
    the model's text only: the refusal message is never scanned for them. `guard_language` is
    "supported" or "unsupported" (the request's language against the languages the reward
    declares it was calibrated for; the code itself in `unsupported_language`), or None for a
    reward that declares none.
    """

    prompt_tokens: int = 0
    segments_accepted: int = 0
    segments_fallback: int = 0
    candidates_sampled: int = 0
    candidates_rejected: int = 0
    candidates_vetoed: int = 0
    tokens_sampled: int = 0
    tokens_emitted: int = 0
    reward_calls: int = 0
    llm_calls: int = 0
    llm_forward_tokens: int | None = 0
    final_reward: float | None = None
    refused: bool = False
    refusal_reason: RefusalReason | None = None
    elapsed_s: float = 0.0
    backend_retries: int = 0
    reward_errors: int = 0
    tool_call_candidates: int = 0
    tool_calls_dropped: int = 0
    stop_string_cuts: int = 0
    stop_cut_to_empty: int = 0
    ended_by: EndedBy | None = None
    guard_language: Literal["supported", "unsupported"] | None = None
    emitted_rewards: list[float] = field(default_factory=list, repr=False)

    @property
    def rejection_rate(self) -> float:
        return self.candidates_rejected / self.candidates_sampled if self.candidates_sampled else 0.0

    @property
    def mean_accepted_reward(self) -> float | None:
        if not self.emitted_rewards:
            return None
        return sum(self.emitted_rewards) / len(self.emitted_rewards)

    def as_dict(self) -> dict[str, object]:
        """Exactly the documented keys, in the documented order."""
        values = asdict(self)
        values["rejection_rate"] = round(self.rejection_rate, 6)
        values["mean_accepted_reward"] = self.mean_accepted_reward
        values["elapsed_s"] = round(self.elapsed_s, 4)
        return {key: values[key] for key in STATS_KEYS}

    def summary(self) -> str:
        """One line for a terminal."""
        mean = self.mean_accepted_reward
        return (
            f"stars: {self.segments_accepted} accepted / {self.segments_fallback} fallback segments, "
            f"{self.candidates_rejected}/{self.candidates_sampled} candidates rejected "
            f"({self.rejection_rate:.0%}), {self.tokens_emitted} tokens emitted of {self.tokens_sampled} "
            f"sampled, mean reward {'-' if mean is None else f'{mean:.3f}'}, "
            f"{f'{self.candidates_vetoed} vetoed, ' if self.candidates_vetoed else ''}"
            f"{f'refused ({self.refusal_reason}), ' if self.refused else ''}{self.elapsed_s:.1f}s"
        )
