"""Which per-request overrides a caller may send: an allowlist, so a client cannot weaken the guard.

A guarded service's operator picks the config; a client of that service (an HTTP request, a call
kwarg of a locked `STARSChatModel`) may only change what the operator's `OverridePolicy` allows.
Almost every knob can weaken the guard in some way (`acceptance="soft"` with a huge `beta`, a
tiny `relative_quantile`, `max_attempts=1`, an absolute threshold of -1e9, `temperature=0`), so
the rule is an allowlist, not a list of dangerous fields. Without any grant a caller may only
lower the cost of its own request:

- `max_new_tokens`: at most the base config's value;
- `time_budget_s`: at most the base value (any value when the base has none);
- `seed`: any value (it picks a sample, it does not change what may be emitted).

A value equal to the base value is not a change and is always accepted. Pure: imports only the
config, the errors and the standard library, so the server and the LangChain model share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stars_guard.config import SEED_MAX, STARSConfig
from stars_guard.errors import ConfigError, LockedOverrideError

CONFIG_FIELDS: frozenset[str] = frozenset(STARSConfig.model_fields)
# Lowering these only shortens the caller's own answer; they never change what may be emitted.
COST_LOWERING: frozenset[str] = frozenset({"max_new_tokens", "time_budget_s", "seed"})
MAX_SEED = SEED_MAX  # the largest seed a caller may send (the backends take signed 64-bit seeds)


@dataclass(frozen=True)
class OverridePolicy:
    """The fields a caller may set to any value, beyond the cost-lowering ones (module docstring).

    `OverridePolicy()` grants nothing extra; `OverridePolicy(allowed={"temperature"})` lets callers
    choose the temperature; `OverridePolicy.unlocked()` lets them change everything (trusted callers).
    An unknown field name raises `ConfigError` when the policy is built, not at the first request.
    """

    allowed: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if isinstance(self.allowed, str):  # frozenset("seed") would be a set of letters
            raise ConfigError(f"OverridePolicy(allowed=...) takes field names, not the string {self.allowed!r}")
        allowed = frozenset(self.allowed)
        unknown = sorted(str(name) for name in allowed - CONFIG_FIELDS)
        if unknown:
            raise ConfigError(
                f"cannot allow overrides of unknown STARSConfig field(s): {', '.join(unknown)}; "
                f"known fields: {', '.join(sorted(CONFIG_FIELDS))}"
            )
        object.__setattr__(self, "allowed", allowed)

    @classmethod
    def unlocked(cls) -> OverridePolicy:
        """A policy that allows every field: for callers as trusted as the operator."""
        return cls(allowed=CONFIG_FIELDS)

    def describe(self) -> str:
        """What a caller may change, in one line (start-up banner, logs)."""
        if self.allowed >= CONFIG_FIELDS:
            return "every STARSConfig field"
        granted = f"; also any value of: {', '.join(sorted(self.allowed))}" if self.allowed else ""
        return f"max_new_tokens and time_budget_s (lower only), seed{granted}"

    def refusal(self, name: str, base_value: Any, value: Any) -> str | None:
        """Why `name` may not change from `base_value` to `value`, or None when it may."""
        if value == base_value or name in self.allowed or name == "seed":
            return None
        if name in ("max_new_tokens", "time_budget_s"):
            if name == "time_budget_s" and base_value is None:
                return None
            if value is None:  # no limit at all: the opposite of lowering it
                return f"got None; a request may only lower it (at most {base_value!r})"
            try:
                if value <= base_value:
                    return None
            except TypeError:  # not a number: an invalid value, which validation reports instead
                return None
            return f"got {value!r}; a request may only lower it (at most {base_value!r})"
        return f"got {value!r}; fixed at {base_value!r}"

    def apply(
        self, base: STARSConfig, overrides: Mapping[str, Any], *, names: Mapping[str, str] | None = None
    ) -> STARSConfig:
        """`base` with `overrides` applied, validated; `LockedOverrideError` for anything not allowed.

        Every given value is applied, `None` included (as in `STARSConfig.with_overrides`). `names` maps a
        field to how the caller spelled it (`stars.temperature`, `max_tokens`) for the message.
        Locked fields are reported before invalid values, so a probe learns only that it is locked;
        unknown field names fail as invalid config (`ConfigError`).
        """
        updates = dict(overrides)
        try:
            candidate: STARSConfig | None = base.with_overrides(**updates)
            invalid: ConfigError | None = None
        except ConfigError as exc:
            candidate, invalid = None, exc
        if invalid is not None and not set(updates) <= CONFIG_FIELDS:
            raise invalid
        refused: list[tuple[str, str]] = []
        for name, value in updates.items():
            new = getattr(candidate, name) if candidate is not None else _normalized(value)
            reason = self.refusal(name, getattr(base, name), new)
            if reason is not None:
                refused.append((name, reason))
        if refused:
            raise _locked(refused, names or {})
        if invalid is not None:
            raise invalid
        assert candidate is not None
        return candidate


def _normalized(value: Any) -> Any:
    """A raw value as validation would store it, where that matters for comparing (lists -> tuples)."""
    return tuple(value) if isinstance(value, list) else value


def _locked(refused: list[tuple[str, str]], names: Mapping[str, str]) -> LockedOverrideError:
    fields = tuple(name for name, _ in refused)
    params = tuple(names.get(name, name) for name in fields)
    subject = "this setting is" if len(fields) == 1 else "these settings are"
    lines = [f"{subject} fixed by the operator and cannot be changed per request:"]
    lines += [f"  {param}: {reason}" for param, (_, reason) in zip(params, refused, strict=True)]
    flags = " ".join(f"--allow-override {name}" for name in fields)
    granted = ", ".join(repr(name) for name in fields)
    lines.append(
        f"the operator can allow {'it' if len(fields) == 1 else 'them'} with `stars-guard serve {flags}` "
        f"(from Python: OverridePolicy(allowed={{{granted}}}))"
    )
    return LockedOverrideError("\n".join(lines), fields=fields, params=params)


DEFAULT_POLICY = OverridePolicy()

__all__ = ["COST_LOWERING", "DEFAULT_POLICY", "MAX_SEED", "LockedOverrideError", "OverridePolicy"]
