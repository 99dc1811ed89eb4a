"""Typed errors. Each message says what is wrong and how to fix it."""

from __future__ import annotations


class StarsGuardError(Exception):
    """Base class of every error stars-guard raises on purpose."""


class ConfigError(StarsGuardError, ValueError):
    """A configuration value is invalid; the message names the field."""


class LockedOverrideError(ConfigError):
    """A per-request override the operator's `OverridePolicy` does not allow.

    A `ConfigError` so callers that already handle bad config handle this too; `fields` are the
    offending `STARSConfig` fields and `params` the names the caller used for them (same order).
    """

    def __init__(self, message: str, fields: tuple[str, ...] = (), params: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)
        self.params = tuple(params) or self.fields


class InvalidMessagesError(StarsGuardError, ValueError):
    """Chat messages are empty or malformed."""


class SpecError(StarsGuardError, ValueError):
    """A `--backend` or `--reward` spec string is not recognised."""


class ModelNotFoundError(StarsGuardError, FileNotFoundError):
    """Model files are missing (usually: `stars-guard models pull` was not run)."""


class ModelPullError(StarsGuardError, RuntimeError):
    """Fetching or converting the offline default models failed."""


class BackendError(StarsGuardError, RuntimeError):
    """The generation backend failed (after its retries); the message carries the server's words."""


class RewardError(StarsGuardError, RuntimeError):
    """The reward model failed (after its retries). Under fail-closed the answer stops here."""


class ContextWindowExceededError(StarsGuardError, ValueError):
    """The prompt plus the requested new tokens do not fit in the model's context window."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_window: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_window = context_window
        super().__init__(
            f"the prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, "
            f"but the model's context window is {context_window} tokens: shorten the prompt or "
            f"lower max_new_tokens to at most {max(context_window - prompt_tokens, 0)}"
        )


class ConstraintBudgetError(ConfigError):
    """`max_new_tokens` cannot hold even the shortest answer an output constraint allows.

    Raised when a constrained answer opens, before drafting: a forced tool call or a structured
    answer is always finished within the budget (the drafting keeps the tokens that close it in
    reserve), so a budget under the shortest valid form is refused up front. `needed` is that form's
    length in tokens (its end-of-sequence token included), `max_new_tokens` the budget given.
    """

    def __init__(self, needed: int, max_new_tokens: int, what: str) -> None:
        self.needed = int(needed)
        self.max_new_tokens = int(max_new_tokens)
        super().__init__(
            f"max_tokens={max_new_tokens} is too small for {what}: its shortest valid form needs {needed} "
            f"tokens; raise max_tokens to at least {needed}"
        )
