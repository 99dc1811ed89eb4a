"""The two small protocols the engine knows: a generation `Backend` and a `RewardModel`.

The engine never imports a concrete backend or scorer; adapters in `stars_guard.adapters`
implement these. Backends with token-level control (transformers, llama.cpp) and black-box
HTTP backends present the same surface: open a generation, draft K candidate segments,
commit the accepted one, close.

What only some adapters can do is declared, not discovered: each backend, generation and reward
has a frozen `capabilities` value (`stars_guard.capabilities`), and the engine reads its fields.
The small protocols below (`EntropyDrafter`, `BatchDrafter`, ...) only type the extra methods a
declared capability promises; nothing checks them with `isinstance`. Wrappers subclass
`GenerationWrapper`, `BackendWrapper` or `RewardWrapper`, which pass each call and the inner
object's capabilities on explicitly: none forwards attributes with `__getattr__`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, cast, runtime_checkable

from stars_guard.capabilities import (
    BackendCapabilities,
    ConstraintSupport,
    GenerationCapabilities,
    RewardCapabilities,
    backend_capabilities,
    generation_capabilities,
    reward_capabilities,
)
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

    Optional extras, declared in `capabilities` (`GenerationCapabilities`): entropy cuts
    (`EntropyDrafter`) and retry counts (`RetryReporter`).
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


class EntropyDrafter(Protocol):
    """A generation that can also end a candidate where its next-token entropy reaches a cut.

    The CARDS rule behind `segmentation="entropy"` needs next-token logits: the local backends
    (transformers, llama.cpp) have them, the HTTP ones do not. Declared with
    `GenerationCapabilities(entropy_segments=True)`.
    """

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        """`Generation.draft`; with `entropy_cut` (nats) a candidate also ends before an unsure token."""
        ...


class RetryReporter(Protocol):
    """A generation whose backend retries failed calls (HTTP): the count reaches the statistics.

    Declared with `GenerationCapabilities(reports_retries=True)`."""

    @property
    def backend_retries(self) -> int:
        """Retries the backend made for this generation so far."""
        ...


class BlockCachedGeneration(Protocol):
    """A generation whose server reuses a prompt's KV cache in whole blocks only (vLLM): a round
    whose prompt ends inside a block recomputes that block's tail. Declared with
    `GenerationCapabilities(cache_blocks=True)`."""

    def cache_alignment(self) -> tuple[int, int] | None:
        """(block size, tokens of the next round's prompt), or None while the block size is unknown."""
        ...


class GenerationWrapper:
    """Base for a `Generation` that wraps another and changes only some calls (timing, scheduling).

    Every call of the protocol goes to `inner`, and so do its capabilities, passed on explicitly:
    nothing else is forwarded (no `__getattr__`), so what the engine sees of a wrapped generation
    is exactly what the wrapper declares, on every Python version. Code that needs an extra of the
    inner generation (its `token_ids`, say) reads `wrapper.inner`.
    """

    def __init__(self, inner: Generation) -> None:
        self.inner = inner

    @property
    def capabilities(self) -> GenerationCapabilities:
        return generation_capabilities(self.inner)

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
        """The inner generation's retries; 0 for one that reports none."""
        return backend_retries(self.inner)

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        return draft_segment(self.inner, num_candidates, max_tokens, entropy_cut)

    def cache_alignment(self) -> tuple[int, int] | None:
        return cache_alignment(self.inner)

    def retain(self, candidate: Candidate) -> None:
        self.inner.retain(candidate)

    def commit(self, candidate: Candidate) -> None:
        self.inner.commit(candidate)

    def close(self) -> None:
        self.inner.close()


def draft_segment(
    generation: Generation, num_candidates: int, max_tokens: int, entropy_cut: float | None = None
) -> list[Candidate]:
    """`generation.draft`, with `entropy_cut` only for a generation that declares entropy cuts."""
    if entropy_cut is None:
        return generation.draft(num_candidates, max_tokens)
    if not generation_capabilities(generation).entropy_segments:
        raise TypeError(
            f"{type(generation).__name__} cannot cut segments by entropy "
            "(its capabilities do not declare entropy_segments)"
        )
    return cast(EntropyDrafter, generation).draft(num_candidates, max_tokens, entropy_cut=entropy_cut)


def cache_alignment(generation: Generation) -> tuple[int, int] | None:
    """(block size, next prompt's tokens) of a block-cached generation; None for any other, or
    while its block size is unknown."""
    if not generation_capabilities(generation).cache_blocks:
        return None
    return cast(BlockCachedGeneration, generation).cache_alignment()


def backend_retries(generation: Generation) -> int:
    """Retries `generation`'s backend made so far; 0 for one that does not declare it reports them."""
    if not generation_capabilities(generation).reports_retries:
        return 0
    return int(cast(RetryReporter, generation).backend_retries)


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


def constraint_support(backend: Backend, constraint: OutputConstraint) -> ConstraintSupport:
    """How `backend` holds `constraint`, from its declared capabilities (`BackendCapabilities`)."""
    return backend_capabilities(backend).constraint_support(constraint)


class BackendWrapper:
    """Base for a `Backend` that wraps another and changes how it opens generations (timing, scheduling).

    Subclasses override `open`. The wrapper passes on `model_name` and its inner backend's
    constraint support, explicitly; nothing else is forwarded (no `__getattr__`): code that needs
    an extra of the inner backend (its tokenizer, say) reads `wrapper.inner`. The batch
    capabilities are never passed on: they take and return `inner`'s own generations, not the
    wrapped ones a subclass hands out. A wrapper that batches declares them itself.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(constraints=backend_capabilities(self.inner).constraints)

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def open(self, request: OpenRequest) -> Generation:
        return self.inner.open(request)


_WrapperT = TypeVar("_WrapperT")


def unwrapped(wrapped: object) -> object:
    """The adapter at the bottom of a chain of wrappers (their `inner` links), for its extras."""
    while isinstance(wrapped, GenerationWrapper | BackendWrapper | RewardWrapper):
        wrapped = wrapped.inner
    return wrapped


def find_wrapper(wrapped: object, kind: type[_WrapperT]) -> _WrapperT | None:
    """The first object of type `kind` down a chain of wrappers (their `inner` links), or None."""
    while True:
        if isinstance(wrapped, kind):
            return wrapped
        if not isinstance(wrapped, GenerationWrapper | BackendWrapper | RewardWrapper):
            return None
        wrapped = wrapped.inner


@dataclass(frozen=True, slots=True)
class DraftRequest:
    """One generation's share of a batched drafting round (`BatchDrafter.draft_batch`)."""

    generation: Any  # a generation opened by the same backend
    num_candidates: int
    max_tokens: int
    entropy_cut: float | None = None


class BatchDrafter(Protocol):
    """A backend that can draft for several of its open generations in one batched call.

    Lets concurrent requests advance in lockstep (`stars_guard.serving.lockstep.LockstepBackend`): one
    forward per token for every request's candidates instead of one per request. Declared with
    `BackendCapabilities(batch_drafting=True)`.
    """

    def draft_batch(self, requests: Sequence[DraftRequest]) -> list[list[Candidate]]:
        """The candidates of each request, in order; each generation's `commit`/`retain` work as after `draft`."""
        ...


class BatchOpener(Protocol):
    """A backend that can prefill several prompts in one forward (lockstep serving opens with it).

    Declared with `BackendCapabilities(batch_opening=True)`."""

    def open_batch(self, requests: Sequence[OpenRequest]) -> Sequence[Generation | Exception]:
        """One generation per request, in order; an Exception in place of one that could not be opened."""
        ...


@runtime_checkable
class RewardModel(Protocol):
    """Scores partial responses; higher is better. Scales differ per model.

    `conversation` is every turn so far, system included (a harmful request split over turns is
    only visible in all of them); the engine passes a tuple of `ChatMessage`. Adapters also take a
    plain string as one user turn, for direct calls (`stars_guard.messages.as_conversation`).
    What a reward offers beyond `score` (components, a calibrated veto floor, batched scoring) is
    declared in its `capabilities` (`RewardCapabilities`); a reward that declares none is scored
    through `score` alone.
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


class ComponentRewardModel(RewardModel, Protocol):
    """A reward that reports named components beside the steering reward.

    Declared with `RewardCapabilities(components=(...))`."""

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        """`score`'s rewards plus the components, for the same texts."""
        ...


class LanguageAwareReward(RewardModel, Protocol):
    """A reward calibrated for some languages only (`RewardCapabilities.languages`)."""

    def unsupported_language(self, conversation: Sequence[ChatMessage]) -> str | None:
        """The language of a client turn the reward was not calibrated for, or None."""
        ...


class BatchRewardModel(RewardModel, Protocol):
    """A reward that scores several requests' responses in one call (one encoder pass).

    Lockstep serving scores every request of a round together this way (`BatchingReward`).
    Declared with `RewardCapabilities(batched_scoring=True)`.
    """

    def score_many(self, items: Sequence[tuple[Sequence[ChatMessage], Sequence[str]]]) -> list[RewardScores]:
        """Per item, the `RewardScores` that `score_components` would give it."""
        ...


def score_conversation(
    reward: RewardModel, conversation: Sequence[ChatMessage], responses: Sequence[str]
) -> RewardScores:
    """Score through the surface `reward` declares: components where its capabilities name some."""
    if reward_capabilities(reward).reports_components:
        return cast(ComponentRewardModel, reward).score_components(conversation, responses)
    return RewardScores(reward.score(conversation, responses))


def score_batch(
    reward: RewardModel, items: Sequence[tuple[Sequence[ChatMessage], Sequence[str]]]
) -> list[RewardScores]:
    """Several requests' responses: one `score_many` call where `reward` declares batched scoring,
    else one `score_conversation` per request."""
    if reward_capabilities(reward).batched_scoring:
        return list(cast(BatchRewardModel, reward).score_many(items))
    return [score_conversation(reward, conversation, responses) for conversation, responses in items]


class RewardWrapper:
    """Base for a reward that wraps another and changes how it is called (timing, batching, checks).

    Subclasses override `score_components`; `score` follows from it. The wrapper declares its
    inner reward's components and calibrated floor as its own (`capabilities`), so the veto holds
    through any stack of wrappers, and never batched scoring, which a wrapper offers only by
    implementing `score_many` and declaring it. Nothing else is forwarded (no `__getattr__`).
    """

    def __init__(self, inner: RewardModel) -> None:
        self.inner = inner

    @property
    def capabilities(self) -> RewardCapabilities:
        inner = reward_capabilities(self.inner)
        return RewardCapabilities(
            components=inner.components,
            safety_floor=inner.safety_floor,
            vetoes=inner.vetoes,
            languages=inner.languages,
        )

    def unsupported_language(self, conversation: Sequence[ChatMessage]) -> str | None:
        """The inner reward's verdict (declared with `capabilities.languages`)."""
        return cast(LanguageAwareReward, self.inner).unsupported_language(conversation)

    @property
    def name(self) -> str:
        return self.inner.name

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        return list(self.score_components(conversation, responses).reward)

    def score_components(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> RewardScores:
        return score_conversation(self.inner, as_conversation(conversation), responses)
