"""What a backend, a generation or a reward can do, declared as one frozen value each.

The engine, the service and lockstep serving read fields of these values; they never discover a
capability by looking for an attribute (`getattr`, `hasattr`) or by `isinstance` against a
runtime-checkable protocol. Discovery broke on Python 3.12: `isinstance` with such a protocol
looks attributes up statically there, so it no longer sees through a wrapper that forwards with
`__getattr__`, and a wrapped reward lost its calibrated veto floor without a word. A declared
value has no such failure mode: a wrapper hands its inner object's value on, field by field.

An object declares its value as a `capabilities` attribute (a class attribute, or a property when
it depends on the instance). One that declares nothing gets the defaults, which say "nothing
extra": a third-party reward that is a plain class with `name` and `score` keeps working, scored
through `score` and with no calibrated floor. An object that has one of the old marker attributes
(`default_safety_floor`, `score_components`, ...) but declares no capabilities is refused with an
error that says what to declare, rather than silently losing what the marker meant.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Literal

from stars_guard.errors import ConfigError

ConstraintSupport = Literal["segments", "whole", "none"]
"""How a backend enforces an `OutputConstraint`: on every segment (a grammar matcher kept across
segments, in process), only on whole answers (an HTTP server's structured-output parameter starts
its grammar at each request's first token, so the engine drafts the whole answer per candidate),
or not at all."""

_CONSTRAINT_SUPPORT: tuple[ConstraintSupport, ...] = ("segments", "whole", "none")


@dataclass(frozen=True, slots=True)
class RewardCapabilities:
    """What a reward model offers beyond `score`.

    - `components`: the named scores `score_components` reports beside the steering reward (for
      the embedded guard: `safety`, `helpfulness`). Empty: the engine calls `score` only. The veto
      reads the `safety` component where there is one, else the steering reward.
    - `safety_floor`: the veto floor this reward was calibrated with, on the score the veto reads;
      what `STARSConfig(safety_floor="auto")` resolves to. None: the reward ships no floor, and
      'auto' means no veto.
    - `vetoes`: further vetoes, each on a component of its own at the floor it was calibrated
      with (for the embedded guard: `answering`, answering a request its harm gate is sure of).
      `STARSConfig.safety_floor` moves only the `safety` floor, never these; `safety_floor=None`
      turns every veto off.
    - `batched_scoring`: `score_many` scores several requests' responses in one call (lockstep
      serving scores a whole round together with it).
    - `languages`: the languages (ISO 639-1 codes) the reward was calibrated for, where it reads
      only some: `unsupported_language(conversation)` names a client turn's language outside
      them, and `STARSConfig.unsupported_language` says what the engine does then. Empty: the
      reward makes no claim, and no language is checked.
    """

    components: tuple[str, ...] = ()
    safety_floor: float | None = None
    vetoes: tuple[tuple[str, float], ...] = ()
    batched_scoring: bool = False
    languages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.components, str):
            raise ConfigError(
                f"RewardCapabilities.components takes a tuple of names, not the string {self.components!r}"
            )
        object.__setattr__(self, "components", tuple(self.components))
        if isinstance(self.languages, str):
            raise ConfigError(f"RewardCapabilities.languages takes a tuple of codes, not the string {self.languages!r}")
        object.__setattr__(self, "languages", tuple(self.languages))
        if self.safety_floor is not None:
            object.__setattr__(self, "safety_floor", _finite("safety_floor", self.safety_floor))
        pairs = tuple(dict(self.vetoes).items())  # a mapping or pairs in; pairs kept (frozen, hashable)
        for name, _ in pairs:
            if name not in self.components or name == "safety":
                raise ConfigError(
                    f"RewardCapabilities.vetoes: {name!r} must be one of the reported components other than "
                    f"'safety' (components: {', '.join(self.components) or 'none'})"
                )
        object.__setattr__(self, "vetoes", tuple((name, _finite(f"vetoes[{name!r}]", floor)) for name, floor in pairs))

    @property
    def reports_components(self) -> bool:
        return bool(self.components)


def _finite(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ConfigError(f"RewardCapabilities.{what} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class BackendCapabilities:
    """What a backend offers beyond `open`.

    - `batch_drafting`: `draft_batch` drafts for several of its open generations in one call
      (what lockstep serving needs); `batch_opening`: `open_batch` prefills several prompts in one
      forward. Both take and return the backend's own generations, so a wrapper never passes
      them on: it would hand out generations the inner backend does not know.
    - `constraints`: how an answer that must be a tool call or match a JSON schema is held (see
      `ConstraintSupport`). Tool calls under 'auto' leave free text around the calls, which only
      a grammar kept across segments can hold: `constraint_support` says so.
    """

    batch_drafting: bool = False
    batch_opening: bool = False
    constraints: ConstraintSupport = "none"

    def __post_init__(self) -> None:
        if self.constraints not in _CONSTRAINT_SUPPORT:
            choices = ", ".join(_CONSTRAINT_SUPPORT)
            raise ConfigError(f"BackendCapabilities.constraints must be one of {choices}, got {self.constraints!r}")

    def constraint_support(self, constraint: Any) -> ConstraintSupport:
        """How this backend holds `constraint` (an `OutputConstraint`)."""
        if constraint.kind == "tool_calls" and not constraint.required and self.constraints != "segments":
            return "none"  # free text around the calls: a grammar from the first token cannot leave it open
        return self.constraints


@dataclass(frozen=True, slots=True)
class GenerationCapabilities:
    """What an open generation offers beyond `draft`.

    - `entropy_segments`: `draft(..., entropy_cut=...)` ends a candidate before an unsure token
      (needs next-token logits: the local backends have them, the HTTP ones do not).
    - `reports_retries`: `backend_retries` counts the failed calls its backend retried (HTTP).
    - `cache_blocks`: its server caches prompts in fixed-size KV blocks and matches whole blocks
      only (vLLM); `cache_alignment()` says where the next round's prompt ends in its block, so
      `segment_size="auto"` can end segments on block boundaries.
    """

    entropy_segments: bool = False
    reports_retries: bool = False
    cache_blocks: bool = False


NOTHING_EXTRA_REWARD = RewardCapabilities()
NOTHING_EXTRA_BACKEND = BackendCapabilities()
NOTHING_EXTRA_GENERATION = GenerationCapabilities()

# Attributes that meant a capability before capabilities were declared: finding one on an object that
# declares nothing means its author expects the capability, so it is refused, never silently dropped.
_REWARD_MARKERS = ("default_safety_floor", "score_components", "score_many")
_BACKEND_MARKERS = ("draft_batch", "open_batch", "constraint_support")
_GENERATION_MARKERS = ("supports_entropy_segments", "backend_retries")


@dataclass(frozen=True, slots=True)
class _Kind:
    what: str
    type_: type
    default: Any
    markers: tuple[str, ...]


_REWARD = _Kind("reward", RewardCapabilities, NOTHING_EXTRA_REWARD, _REWARD_MARKERS)
_BACKEND = _Kind("backend", BackendCapabilities, NOTHING_EXTRA_BACKEND, _BACKEND_MARKERS)
_GENERATION = _Kind("generation", GenerationCapabilities, NOTHING_EXTRA_GENERATION, _GENERATION_MARKERS)


def _declared(obj: object, kind: _Kind) -> Any:
    value = getattr(obj, "capabilities", None)
    if isinstance(value, kind.type_):
        return value
    if value is not None:
        raise ConfigError(
            f"{type(obj).__name__}.capabilities must be a {kind.type_.__name__}, got {type(value).__name__}"
        )
    markers = [name for name in kind.markers if _has_own(obj, name)]
    if markers:
        raise ConfigError(
            f"{kind.what} {type(obj).__name__} has {', '.join(markers)} but declares no capabilities: add "
            f"`capabilities = {kind.type_.__name__}(...)` (from stars_guard.capabilities) saying what it offers, "
            "so that no wrapper and no Python version can drop it"
        )
    return kind.default


def _has_own(obj: object, name: str) -> bool:
    """Whether `obj` has `name` itself (its class or instance), without calling a property."""
    try:
        inspect.getattr_static(obj, name)
    except AttributeError:
        return False
    return True


def reward_capabilities(reward: object) -> RewardCapabilities:
    """`reward`'s declared capabilities; the defaults for a plain reward that declares none."""
    return _declared(reward, _REWARD)


def backend_capabilities(backend: object) -> BackendCapabilities:
    """`backend`'s declared capabilities; the defaults for a plain backend that declares none."""
    return _declared(backend, _BACKEND)


def generation_capabilities(generation: object) -> GenerationCapabilities:
    """`generation`'s declared capabilities; the defaults for a plain generation that declares none."""
    return _declared(generation, _GENERATION)
