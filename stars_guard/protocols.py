"""The two small protocols the engine knows: a generation `Backend` and a `RewardModel`.

The engine never imports a concrete backend or scorer; adapters in `stars_guard.adapters`
implement these. Backends with token-level control (transformers, llama.cpp) and black-box
HTTP backends present the same surface: open a generation, draft K candidate segments,
commit the accepted one, close.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from stars_guard.messages import ChatMessage, as_conversation

FinishReason = Literal["length", "eos"]


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """One drafted segment.

    `text` is the decoded continuation of the accepted text (EOS not included). `token_ends`
    holds, per token, the character offset in `text` where that token's text ends, so the engine
    can cut a candidate at a stop string and still count its tokens exactly.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    token_ends: tuple[int, ...] = field(default=())

    @property
    def num_tokens(self) -> int:
        """Tokens sampled, EOS included."""
        return len(self.token_ids)

    @property
    def text_tokens(self) -> int:
        """Tokens that produce `text` (EOS excluded)."""
        return len(self.token_ids) - (1 if self.finish_reason == "eos" else 0)

    def tokens_covering(self, chars: int) -> int:
        """How many tokens are needed to produce the first `chars` characters of `text`."""
        if chars <= 0:
            return 0
        if not self.token_ends:
            return self.text_tokens
        for index, end in enumerate(self.token_ends):
            if end >= chars:
                return index + 1
        return self.text_tokens


@runtime_checkable
class Generation(Protocol):
    """One answer being written: the accepted prefix and the means to extend it."""

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the rendered prompt."""
        ...

    @property
    def llm_forward_tokens(self) -> int | None:
        """Token positions the LLM computed so far (prefill included); None if unknowable."""
        ...

    @property
    def llm_calls(self) -> int:
        """Drafting calls made so far (one per `draft`)."""
        ...

    # Optional: `backend_retries: int`, retries an HTTP backend made (read with getattr, default 0).

    def draft(self, num_candidates: int, max_tokens: int) -> list[Candidate]:
        """Sample `num_candidates` continuations of the accepted prefix, at most `max_tokens` each."""
        ...

    def retain(self, candidate: Candidate) -> None:
        """Keep what committing `candidate` later needs (it may become the fallback).

        Called after a round in which nothing passed, with the best candidate so far if it came
        from that round. Local backends keep its KV rows so a fallback needs no recomputation;
        stateless backends do nothing. Replaces any earlier retained candidate.
        """
        ...

    def commit(self, candidate: Candidate) -> None:
        """Append `candidate` (from the latest `draft`, or the retained one) to the accepted prefix."""
        ...

    def close(self) -> None:
        """Release what the generation holds (KV cache, connections). Idempotent."""
        ...


class GenerationWrapper:
    """Base for a `Generation` that wraps another and changes only some calls (timing, scheduling).

    Everything not overridden goes to `inner`, extras such as `backend_retries` or `token_ids` included.
    """

    def __init__(self, inner: Generation) -> None:
        self.inner = inner

    @property
    def prompt_tokens(self) -> int:
        return self.inner.prompt_tokens

    @property
    def llm_forward_tokens(self) -> int | None:
        return self.inner.llm_forward_tokens

    @property
    def llm_calls(self) -> int:
        return self.inner.llm_calls

    def draft(self, num_candidates: int, max_tokens: int, **options: Any) -> list[Candidate]:
        return self.inner.draft(num_candidates, max_tokens, **options)  # type: ignore[call-arg]

    def retain(self, candidate: Candidate) -> None:
        self.inner.retain(candidate)

    def commit(self, candidate: Candidate) -> None:
        self.inner.commit(candidate)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


@runtime_checkable
class Backend(Protocol):
    """Opens generations. Implementations: `stars_guard.adapters`."""

    @property
    def model_name(self) -> str: ...

    def open(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> Generation:
        """Render and prefill `messages`; raise `ContextWindowExceededError` when they cannot fit."""
        ...


@dataclass(frozen=True, slots=True)
class DraftRequest:
    """One generation's share of a batched drafting round (`BatchDrafter.draft_batch`)."""

    generation: Any  # a generation opened by the same backend
    num_candidates: int
    max_tokens: int
    entropy_cut: float | None = None


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """The arguments of one `Backend.open`, for backends that prefill several at once (`open_batch`)."""

    messages: Sequence[ChatMessage]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None


@runtime_checkable
class BatchDrafter(Protocol):
    """A backend that can draft for several of its open generations in one batched call.

    Lets concurrent requests advance in lockstep (`stars_guard.serving.lockstep.LockstepBackend`): one
    forward per token for every request's candidates instead of one per request.
    """

    def draft_batch(self, requests: Sequence[DraftRequest]) -> list[list[Candidate]]:
        """The candidates of each request, in order; each generation's `commit`/`retain` work as after `draft`."""
        ...

    # Optional: `open_batch(requests: Sequence[OpenRequest]) -> list[Generation | Exception]`, several
    # prefills in one forward (an Exception in place of a generation that could not be opened).


@runtime_checkable
class RewardModel(Protocol):
    """Scores partial responses; higher is better. Scales differ per model.

    `conversation` is every turn so far, system included (a harmful request split over turns is
    only visible in all of them); the engine passes a tuple of `ChatMessage`. Adapters also take a
    plain string as one user turn, for direct calls (`stars_guard.messages.as_conversation`).
    """

    @property
    def name(self) -> str: ...

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        """Reward of each `response` (a partial answer) to the conversation, in one batched call."""
        ...


@dataclass(frozen=True, slots=True)
class RewardScores:
    """A batch of scores: `reward` steers (picks the better candidates); named `components`
    (for `GuardReward`: `safety`, `helpfulness`) say why. The veto reads `safety` when present."""

    reward: Sequence[float]
    components: Mapping[str, Sequence[float]] = field(default_factory=dict)

    @property
    def safety(self) -> Sequence[float] | None:
        return self.components.get("safety")


@runtime_checkable
class ComponentRewardModel(RewardModel, Protocol):
    """A reward that reports named components beside the steering reward."""

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        """`score`'s rewards plus the components, for the same texts."""
        ...


@runtime_checkable
class BatchRewardModel(RewardModel, Protocol):
    """A reward that scores several requests' responses in one call (one encoder pass).

    Lockstep serving scores every request of a round together this way (`BatchingReward`).
    """

    def score_many(self, items: Sequence[tuple[Sequence[ChatMessage], Sequence[str]]]) -> list[RewardScores]:
        """Per item, the `RewardScores` that `score_components` would give it."""
        ...


@runtime_checkable
class CalibratedVeto(Protocol):
    """A reward that ships the veto floor it was calibrated with (read by `safety_floor='auto'`)."""

    @property
    def default_safety_floor(self) -> float: ...


def score_conversation(
    reward: RewardModel, conversation: Sequence[ChatMessage], responses: Sequence[str]
) -> RewardScores:
    """Score through whichever surface `reward` has: components where it reports them."""
    if isinstance(reward, ComponentRewardModel):
        return reward.score_components(conversation, responses)
    return RewardScores(reward.score(conversation, responses))


class RewardWrapper:
    """Base for a reward that wraps another and changes how it is called (timing, batching, checks).

    Subclasses override `score_components`; `score` and the extras of `inner` follow from it.
    """

    def __init__(self, inner: RewardModel) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        return list(self.score_components(conversation, responses).reward)

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        return score_conversation(self.inner, as_conversation(conversation), responses)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)
