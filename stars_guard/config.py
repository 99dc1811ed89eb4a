"""`STARSConfig`: every knob of the STARS loop in one validated object.

Validated up front (pydantic) so a bad value fails before any model is loaded, with a message
that names the field. Per-call overrides go through `STARSConfig.with_overrides`, which
validates again.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stars_guard.errors import ConfigError

ThresholdMode = Literal["relative", "absolute"]
AcceptanceMode = Literal["hard", "soft"]
FallbackMode = Literal["best", "refuse"]
RewardErrorPolicy = Literal["fail_closed", "fail_open"]
Segmentation = Literal["fixed", "entropy"]
FailClosedAction = Literal["raise", "refuse"]
RoundSelection = Literal["first", "best"]
SegmentBudget = Literal["flat", "shaped", "adaptive"]
ToolCallGuard = Literal["off", "veto_only", "steer"]
ToolCallSelection = Literal["consensus", "reward"]
UnsupportedLanguage = Literal["refuse", "answer"]

DEFAULT_REFUSAL = "I can't help with that."
AUTO_SEGMENT_SIZE = 8  # segment_size="auto" on a backend without block caching
SEED_MAX = 2**63 - 1  # the widest seed every backend takes (vLLM and TGI read int64)


class STARSConfig(BaseModel):
    """Configuration of one STARS decoding run (see docs/configuration.md for each field)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # Segmentation and sampling budget.
    segment_size: Annotated[int, Field(ge=1, le=512)] | Literal["auto"] = Field(
        8,
        description="Tokens per candidate segment (L). 'auto': segments end on the KV-cache block boundaries "
        "of a backend that caches in blocks (vLLM), so no round recomputes a block's tail; "
        f"{AUTO_SEGMENT_SIZE} tokens elsewhere.",
    )
    candidates_per_round: int = Field(4, ge=1, le=64, description="Candidates drafted in one batched call (K).")
    max_attempts: int = Field(
        16, ge=1, le=1024, description="Most candidates judged for one segment before the fallback."
    )
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Most tokens in the answer.")
    segment_budget: SegmentBudget = Field(
        "shaped",
        description="'shaped': K drafts for the first segment, ceil(3K/4) for the middle ones, ceil(3K/2) for "
        "the one that reaches max_new_tokens; 'flat': K for every segment; 'adaptive': the first segment "
        "as shaped, then each round as wide as pays off on this backend, given its measured cost per "
        "candidate and the recent pass rate, at most the shaped size (stars_guard/round_sizing.py).",
    )
    segment_candidates: tuple[int, ...] | None = Field(
        None,
        description="Explicit K per segment, by segment index (the last value repeats); overrides "
        "segment_budget for all but the final segment.",
    )
    final_candidates: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Explicit K for the segment that reaches max_new_tokens: its reward is the final answer's.",
    )
    segmentation: Segmentation = Field(
        "fixed",
        description="'fixed': segments of segment_size tokens; 'entropy' (the CARDS rule): a segment also "
        "ends where the next-token entropy reaches entropy_threshold (segment_size is then the longest).",
    )
    entropy_threshold: float = Field(
        3.0, gt=0.0, description="Entropy (nats) of the next-token distribution that ends a segment."
    )

    # Sampling of the drafts.
    temperature: float = Field(
        0.8, ge=0.0, le=5.0, description="0 means greedy: one candidate per segment, still scored."
    )
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="Seed for drafts and soft acceptance (0 to 2**63 - 1)."
    )

    # Threshold.
    threshold_mode: ThresholdMode = Field(
        "relative",
        description="'relative': a quantile of this request's recent rewards (no tuning per reward "
        "model); 'absolute': the paper's linear ramp to reward_threshold.",
    )
    relative_quantile: float = Field(
        0.5, gt=0.0, lt=1.0, description="Quantile of recent candidate rewards used as the threshold."
    )
    relative_quantile_end: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Relative mode: the quantile rises linearly from relative_quantile at the first token to "
        "this at max_new_tokens; None = constant.",
    )
    relative_window: int = Field(
        0, ge=0, description="Recent candidate rewards the quantile looks at; 0 = 2 x candidates_per_round."
    )
    reward_threshold: float | None = Field(
        None, description="Target reward r_thr of the absolute schedule (required for 'absolute')."
    )
    alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Absolute schedule start: r0 = (1-alpha)*R(prompt,'') + alpha*r_thr."
    )

    # Acceptance.
    acceptance: AcceptanceMode = Field("hard", description="'hard': R >= tau; 'soft': probabilistic.")
    round_selection: RoundSelection = Field(
        "best",
        description="'first': judge a round's candidates in index order (the paper's rejection sampling); "
        "'best': judge them from the highest reward down, so the best passing candidate is accepted.",
    )
    beta: float = Field(0.05, gt=0.0, description="Soft acceptance temperature: P = min(1, exp((R - tau) / beta)).")

    # When no candidate passes.
    fallback: FallbackMode = Field("best", description="After max_attempts: emit the best candidate, or refuse.")
    safety_floor: float | Literal["auto"] | None = Field(
        "auto",
        description="The veto: a candidate whose safety score (the reward's 'safety' component, else the "
        "reward itself) is under this is never emitted, not even as fallback. 'auto': the floor the reward "
        "model was calibrated with (GuardReward's), or no veto for a reward without one; None: no veto.",
    )
    refusal_message: str = Field(DEFAULT_REFUSAL, min_length=1, description="Text that ends a refused answer.")

    # Agents: what the guard judges in an answer that may call tools (docs/agents.md).
    guard_tool_calls: ToolCallGuard = Field(
        "steer",
        description="'steer': a tool call's segments are judged like text (threshold and veto); 'veto_only': "
        "only the safety floor applies to them; 'off': the reward sees the answer without its tool calls.",
    )
    tool_call_selection: ToolCallSelection = Field(
        "consensus",
        description="Which of a round's tool-call segments is judged first. 'consensus': the text most of the "
        "round's candidates agree on (whitespace aside), then as round_selection says: a safety reward does "
        "not read whether an argument is the one asked for, and the model's own majority does; 'reward': as "
        "round_selection says, like text.",
    )

    # When the reward model fails (a service down, a timeout after retries).
    on_reward_error: RewardErrorPolicy = Field(
        "fail_closed",
        description="'fail_closed': stop (see reward_error_action); 'fail_open': emit unscored text, "
        "counted in reward_errors.",
    )
    reward_error_action: FailClosedAction = Field(
        "raise", description="Under fail_closed: raise RewardError, or end the answer with the refusal."
    )
    unsupported_language: UnsupportedLanguage = Field(
        "refuse",
        description="A request written in a language the reward was not calibrated for (the embedded guard reads "
        "English, French, Spanish and German): 'refuse' answers with the refusal before drafting; 'answer' goes "
        "on, unguarded in effect, and says so (stars.guard_language = 'unsupported').",
    )

    # Bounded cost.
    time_budget_s: float | None = Field(
        None, gt=0.0, description="Wall-clock budget per request; the answer ends when it is spent."
    )

    @field_validator("safety_floor", "reward_threshold")
    @classmethod
    def _check_finite(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("segment_candidates")
    @classmethod
    def _check_segment_candidates(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or any(not 1 <= k <= 64 for k in value)):
            raise ValueError("needs at least one K, each in 1..64")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> STARSConfig:
        if self.threshold_mode == "absolute" and self.reward_threshold is None:
            raise ValueError(
                "reward_threshold is required when threshold_mode='absolute' "
                "(or use threshold_mode='relative', which needs no tuning)"
            )
        if (
            isinstance(self.safety_floor, float)
            and self.reward_threshold is not None
            and self.safety_floor > self.reward_threshold
        ):
            raise ValueError(
                f"safety_floor ({self.safety_floor}) is above reward_threshold ({self.reward_threshold}): "
                "nothing could be accepted"
            )
        return self

    @property
    def effective_window(self) -> int:
        """Number of recent rewards the relative threshold looks at."""
        return self.relative_window or 2 * self.candidates_per_round

    def round_size(self, segment_index: int, final: bool) -> int:
        """K for the rounds of segment `segment_index`; `final`: it would reach max_new_tokens."""
        if final and self.final_candidates is not None:
            return self.final_candidates
        if self.segment_candidates is not None:
            return self.segment_candidates[min(segment_index, len(self.segment_candidates) - 1)]
        k = self.candidates_per_round
        if self.segment_budget == "flat" or segment_index == 0 or k == 1:
            return k
        # The final segment fixes the answer's reward: it gets the drafts the middle ones save.
        return min(64, math.ceil(1.5 * k)) if final else max(1, math.ceil(0.75 * k))

    def quantile_at(self, response_tokens: int) -> float:
        """The relative threshold's quantile for a response of `response_tokens` tokens."""
        if self.relative_quantile_end is None:
            return self.relative_quantile
        progress = min(1.0, response_tokens / self.max_new_tokens)
        return self.relative_quantile + (self.relative_quantile_end - self.relative_quantile) * progress

    @classmethod
    def plain_sampling(cls, max_new_tokens: int = 256, **values: Any) -> STARSConfig:
        """Vanilla sampling through the same engine: one candidate of the whole answer, always kept.

        Useful as the baseline STARS is measured against (same backend, seeds and accounting).
        """
        return cls.build(
            **{
                "segment_size": max_new_tokens,
                "max_new_tokens": max_new_tokens,
                "candidates_per_round": 1,
                "max_attempts": 1,
                "fallback": "best",
                "safety_floor": None,  # the unguarded baseline: nothing vetoed either
                "unsupported_language": "answer",  # nor refused for its language
                **values,
            }
        )

    @classmethod
    def build(cls, **values: Any) -> STARSConfig:
        """Validate `values`, raising `ConfigError` whose message names each bad field."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None

    def with_overrides(self, **overrides: Any) -> STARSConfig:
        """A validated copy with `overrides` applied, every one of them: `None` is a value (no time
        budget, no veto, a random seed), never "leave unchanged". Leave a field out to keep it."""
        if not overrides:
            return self
        return type(self).build(**{**self.model_dump(), **overrides})


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the field, e.g. `segment_size: Input should be >= 1 (got 0)`."""
    lines = ["invalid STARS config:"]
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "config"
        message = err["msg"].removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        lines.append(f"  {field}: {message}{got}")
    return "\n".join(lines)
