"""Spec strings for `--backend` and `--reward`, and the registry behind them.

A spec is `NAME` or `NAME:ARGUMENT` (for example `hf:/models/my-lm`). Built-in names are
registered here; third-party packages add theirs through the entry-point groups
`stars_guard.backends` and `stars_guard.rewards` (each entry point is a factory taking the
argument string or None).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from stars_guard.errors import SpecError
from stars_guard.protocols import Backend, RewardModel


@dataclass(frozen=True)
class SpecEntry:
    """A registered spec: its factory and the form users type."""

    factory: Callable[[str | None], Any]
    usage: str
    needs_argument: bool = False


def _local_backend(_: str | None) -> Backend:
    from stars_guard.adapters.transformers_backend import TransformersBackend

    return TransformersBackend()


def _hf_backend(argument: str | None) -> Backend:
    from stars_guard.adapters.transformers_backend import TransformersBackend

    return TransformersBackend(argument)


def _guard_reward(_: str | None) -> RewardModel:
    from stars_guard.adapters.guard_reward import GuardReward

    return GuardReward()


BACKENDS: dict[str, SpecEntry] = {
    "local": SpecEntry(_local_backend, "local  (embedded SmolLM2-135M-Instruct, after `stars-guard models pull`)"),
    "hf": SpecEntry(_hf_backend, "hf:<hub-id, directory or .gguf file>  (any Hugging Face causal LM)", True),
}
REWARDS: dict[str, SpecEntry] = {
    "default": SpecEntry(_guard_reward, "default  (GuardReward: offline safety + relevance)"),
}
_ENTRY_POINT_GROUPS = {"backend": "stars_guard.backends", "reward": "stars_guard.rewards"}


def build_backend(spec: str) -> Backend:
    """A backend from a spec string such as `local` or `hf:/path/to/model`."""
    return _build("backend", BACKENDS, spec)


def build_reward(spec: str) -> RewardModel:
    """A reward model from a spec string such as `default`."""
    return _build("reward", REWARDS, spec)


def valid_specs(kind: str) -> list[str]:
    registry = BACKENDS if kind == "backend" else REWARDS
    return [entry.usage for entry in _with_plugins(kind, registry).values()]


def _build(kind: str, registry: dict[str, SpecEntry], spec: str) -> Any:
    name, _, argument = spec.strip().partition(":")
    entries = _with_plugins(kind, registry)
    entry = entries.get(name)
    if entry is None:
        listing = "\n  ".join(entry.usage for entry in entries.values())
        raise SpecError(f"unknown {kind} spec {spec!r}; valid {kind} specs:\n  {listing}")
    if entry.needs_argument and not argument:
        raise SpecError(f"{kind} spec {name!r} needs an argument: {entry.usage}")
    return entry.factory(argument or None)


def _with_plugins(kind: str, registry: dict[str, SpecEntry]) -> dict[str, SpecEntry]:
    """Built-ins first; an installed plugin may add names but not replace a built-in."""
    merged = dict(registry)
    for point in entry_points(group=_ENTRY_POINT_GROUPS[kind]):
        if point.name not in merged:
            merged[point.name] = SpecEntry(
                lambda argument, point=point: point.load()(argument), f"{point.name}[:ARG]  (plugin {point.value})"
            )
    return merged
