"""The two small protocols the engine knows: a generation `Backend` and a `RewardModel`.

The engine never imports a concrete backend or scorer; adapters in `stars_guard.adapters`
implement these. Backends with token-level control (transformers, llama.cpp) and black-box
HTTP backends present the same surface: open a generation, draft K candidate segments,
commit the accepted one, close.

What only some adapters can do is a small protocol of its own, checked with `isinstance`:
`EntropyDrafter` and `RetryReporter` (generations), `BatchDrafter`, `BatchOpener` and
`ConstrainedDrafter` (backends),
`ComponentRewardModel`, `BatchRewardModel` and `CalibratedVeto` (rewards). Wrappers subclass
`GenerationWrapper`, `BackendWrapper` or `RewardWrapper`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from stars_guard.messages import ChatMessage, as_conversation
from stars_guard.tools import OutputConstraint

DraftEnd = Literal["length", "eos"]
"""Why a drafted candidate ended: its token budget, or EOS (why an answer ended: `events.FinishReason`)."""


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """One drafted segment.

    `text` is the decoded continuation of the accepted text (EOS not included). `token_ends`
    holds, per token, the character offset in `text` where that token's text ends, so the engine
    can cut a candidate at a stop string and still count its tokens exactly.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: DraftEnd
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
    """One answer being written: the accepted prefix and the means to extend it.

    Optional extras: `EntropyDrafter` (entropy cuts) and `RetryReporter` (HTTP retries).
    """

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


@runtime_checkable
class EntropyDrafter(Protocol):
    """A generation that can also end a candidate where its next-token entropy reaches a cut.

    The CARDS rule behind `segmentation="entropy"` needs next-token logits: the local backends
    (transformers, llama.cpp) have them, the HTTP ones do not. `supports_entropy_segments = True`
    is the marker (`draft` alone would match every generation).
    """

    supports_entropy_segments: bool

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        """`Generation.draft`; with `entropy_cut` (nats) a candidate also ends before an unsure token."""
        ...


@runtime_checkable
class RetryReporter(Protocol):
    """A generation whose backend retries failed calls (HTTP): the count reaches the statistics."""

    @property
    def backend_retries(self) -> int:
        """Retries the backend made for this generation so far."""
        ...


class GenerationWrapper:
    """Base for a `Generation` that wraps another and changes only some calls (timing, scheduling).

    Everything not overridden goes to `inner` (extras such as `token_ids` included). The optional
    capabilities are passed on explicitly, so `isinstance` sees them on every Python version
    (from 3.12 it no longer looks through `__getattr__`): the wrapper is an `EntropyDrafter` when
    `inner` is one, and always a `RetryReporter` (0 retries for an inner that reports none).
    """

    supports_entropy_segments: bool  # set per instance, only when `inner` has the capability

    def __init__(self, inner: Generation) -> None:
        self.inner = inner
        if isinstance(inner, EntropyDrafter):
            self.supports_entropy_segments = True

    @property
    def prompt_tokens(self) -> int:
        return self.inner.prompt_tokens

    @property
    def llm_forward_tokens(self) -> int | None:
        return self.inner.llm_forward_tokens

    @property
    def llm_calls(self) -> int:
        return self.inner.llm_calls

    @property
    def backend_retries(self) -> int:
        return self.inner.backend_retries if isinstance(self.inner, RetryReporter) else 0

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        if entropy_cut is None:
            return self.inner.draft(num_candidates, max_tokens)
        if not isinstance(self.inner, EntropyDrafter):
            raise TypeError(f"{type(self.inner).__name__} cannot cut segments by entropy (not an EntropyDrafter)")
        return self.inner.draft(num_candidates, max_tokens, entropy_cut=entropy_cut)

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


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """What `Backend.open` needs to start one answer: the conversation and its sampling parameters.

    One value rather than five keywords, so wrappers pass it on whole and batched prefill
    (`BatchOpener.open_batch`) takes a list of the same thing. `messages` may hold tool turns
    (assistant `tool_calls`, `tool` results) and `constraint` the bound tools: a backend renders
    them with its chat template where that knows tools, else writes them as text with
    `stars_guard.tools.plain_turns(messages, constraint)`, which also adds the instruction the
    constraint needs.
    """

    messages: Sequence[ChatMessage]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    constraint: OutputConstraint | None = None  # what the answer must look like (tools, a JSON schema)


@runtime_checkable
class Backend(Protocol):
    """Opens generations. Implementations: `stars_guard.adapters`."""

    @property
    def model_name(self) -> str: ...

    def open(self, request: OpenRequest) -> Generation:
        """Render and prefill `request.messages`; raise `ContextWindowExceededError` when they cannot fit."""
        ...


ConstraintSupport = Literal["segments", "whole", "none"]
"""How a backend enforces an `OutputConstraint`: on every segment (a grammar matcher kept across
segments, in process), only on whole answers (an HTTP server's structured-output parameter starts
its grammar at each request's first token, so the engine drafts the whole answer per candidate),
or not at all."""


@runtime_checkable
class ConstrainedDrafter(Protocol):
    """A backend that drafts under an `OutputConstraint`, so every candidate fits it.

    In-process backends mask each token with a grammar matcher that K candidates fork from; HTTP
    backends pass the constraint to the server's structured-output parameters where it can hold.
    """

    def constraint_support(self, constraint: OutputConstraint) -> ConstraintSupport:
        """How `open` with this constraint enforces it (see `ConstraintSupport`)."""
        ...


def constraint_support(backend: Backend, constraint: OutputConstraint) -> ConstraintSupport:
    """`backend`'s support for `constraint` (looked up by name, so wrappers pass it on)."""
    support = getattr(backend, "constraint_support", None)
    return support(constraint) if callable(support) else "none"


class BackendWrapper:
    """Base for a `Backend` that wraps another and changes how it opens generations (timing, scheduling).

    Subclasses override `open`. Other attributes (`tokenizer`, `context_window`, ...) come from
    `inner`, except the batch capabilities: those take and return `inner`'s own generations, not
    the wrapped ones a subclass hands out, so a wrapper never offers them on `inner`'s behalf.
    """

    _NOT_PASSED_ON = frozenset({"inner", "draft_batch", "open_batch"})

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def open(self, request: OpenRequest) -> Generation:
        return self.inner.open(request)

    def __getattr__(self, name: str) -> Any:
        if name in BackendWrapper._NOT_PASSED_ON:  # "inner": not set yet (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)


@dataclass(frozen=True, slots=True)
class DraftRequest:
    """One generation's share of a batched drafting round (`BatchDrafter.draft_batch`)."""

    generation: Any  # a generation opened by the same backend
    num_candidates: int
    max_tokens: int
    entropy_cut: float | None = None


@runtime_checkable
class BatchDrafter(Protocol):
    """A backend that can draft for several of its open generations in one batched call.

    Lets concurrent requests advance in lockstep (`stars_guard.serving.lockstep.LockstepBackend`): one
    forward per token for every request's candidates instead of one per request.
    """

    def draft_batch(self, requests: Sequence[DraftRequest]) -> list[list[Candidate]]:
        """The candidates of each request, in order; each generation's `commit`/`retain` work as after `draft`."""
        ...


@runtime_checkable
class BatchOpener(Protocol):
    """A backend that can prefill several prompts in one forward (lockstep serving opens with it)."""

    def open_batch(self, requests: Sequence[OpenRequest]) -> Sequence[Generation | Exception]:
        """One generation per request, in order; an Exception in place of one that could not be opened."""
        ...


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
