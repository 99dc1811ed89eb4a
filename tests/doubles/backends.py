"""A scripted `Backend`: pre-written candidate segments, round by round, one character per token.

One token per character keeps token counts easy to reason about in a test. `ScriptedBackend`
opens a fresh `ScriptedGeneration` per request and keeps every one of them, with what each
request asked for, so a test can check what the engine (or a worker that outlived its client)
did. Two presets spell the script the way their tests think of a request: `SeededBackend` by its
seed (LangChain callers vary nothing else), `ServerBackend` by its messages (HTTP requests).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stars_guard.capabilities import BackendCapabilities, GenerationCapabilities
from stars_guard.messages import ChatMessage
from stars_guard.protocols import Candidate, OpenRequest

EOS = "<eos>"

Rounds = Sequence[Sequence[str]]
Script = Rounds | Callable[[OpenRequest], Rounds]


def make_candidate(text: str, max_tokens: int = 10**9) -> Candidate:
    """`text` ending in EOS marks a candidate that hit end-of-sequence (EOS is one more token)."""
    body = text.removesuffix(EOS)[:max_tokens]
    hit_eos = text.endswith(EOS) and len(body) < max_tokens
    ids = tuple(ord(char) for char in body) + ((0,) if hit_eos else ())
    return Candidate(body, ids, "eos" if hit_eos else "length", tuple(range(1, len(body) + 1)))


@dataclass
class ScriptedGeneration:
    """Drafts the next scripted round; checks that the engine commits only what it may.

    Once `rounds` run out, every further round drafts `then`, or fails the test when `then` is None
    (a script that ran out usually means the engine drafted more than the test expected).
    """

    rounds: list[list[str]]
    prompt_tokens: int = 7
    then: list[str] | None = None
    on_draft: Callable[[], None] | None = None
    llm_calls: int = 0
    llm_forward_tokens: int = field(init=False)
    requested: list[int] = field(default_factory=list)  # num_candidates of every draft
    drafted: list[str] = field(default_factory=list)
    latest: list[Candidate] = field(default_factory=list)
    retained: Candidate | None = None
    committed: list[str] = field(default_factory=list)
    closed: bool = False
    cache_block: int | None = None  # says it caches in blocks of this many tokens (vLLM-like)
    budgets: list[int] = field(default_factory=list)  # max_tokens of every draft

    @property
    def capabilities(self) -> GenerationCapabilities:
        return GenerationCapabilities(cache_blocks=self.cache_block is not None)

    def cache_alignment(self) -> tuple[int, int] | None:
        if self.cache_block is None:
            return None
        return self.cache_block, self.prompt_tokens + sum(len(text) for text in self.committed)

    def __post_init__(self) -> None:
        self.llm_forward_tokens = self.prompt_tokens  # the prefill

    def draft(self, num_candidates: int, max_tokens: int) -> list[Candidate]:
        if self.on_draft is not None:
            self.on_draft()
        if self.rounds:
            scripted = self.rounds.pop(0)
        elif self.then is not None:
            scripted = self.then
        else:
            raise AssertionError("the script ran out of rounds")
        self.requested.append(num_candidates)
        self.budgets.append(max_tokens)
        self.llm_calls += 1
        # A round may script fewer candidates than requested; the engine judges what it gets.
        self.latest = [make_candidate(text, max_tokens) for text in scripted[:num_candidates]]
        self.drafted.extend(candidate.text for candidate in self.latest)
        self.llm_forward_tokens += sum(candidate.num_tokens for candidate in self.latest)
        return self.latest

    def retain(self, candidate: Candidate) -> None:
        assert any(candidate is drafted for drafted in self.latest)
        self.retained = candidate

    def commit(self, candidate: Candidate) -> None:
        assert any(candidate is drafted for drafted in self.latest) or candidate is self.retained
        assert candidate.finish_reason != "eos", "the engine must not continue past EOS"
        self.committed.append(candidate.text)
        self.retained = None

    def close(self) -> None:
        self.closed = True


class ScriptedBackend:
    """A `Backend` whose every `open` starts a new `ScriptedGeneration` (module docstring).

    `script` is the rounds every request drafts, or a function of the `OpenRequest` that returns
    them. Each draft first waits for `gate` (when given), then sleeps `delay_s`, then calls
    `on_draft`; `open_error` makes every `open` raise it; `capabilities.constraints` is what it says of
    an `OutputConstraint` (its script is the grammar). Thread-safe, as the chat service needs.
    """

    model_name = "scripted-lm"

    def __init__(
        self,
        script: Script,
        *,
        then: Sequence[str] | None = None,
        delay_s: float = 0.0,
        gate: threading.Event | None = None,
        open_error: BaseException | None = None,
        on_draft: Callable[[], None] | None = None,
        constraint_support: str = "none",
        cache_block: int | None = None,
    ) -> None:
        self.script = script
        self.cache_block = cache_block
        self.support = constraint_support  # what `capabilities.constraints` says (the grammar is the script's)
        self.then = None if then is None else list(then)
        self.delay_s = delay_s
        self.gate = gate
        self.open_error = open_error
        self.on_draft = on_draft
        self.opened: list[dict[str, Any]] = []  # what each request asked for, by OpenRequest field
        self.generations: list[ScriptedGeneration] = []
        self._lock = threading.Lock()

    @property
    def generation(self) -> ScriptedGeneration:
        """The latest generation opened (most unit tests open exactly one)."""
        return self.generations[-1]

    def open(self, request: OpenRequest) -> ScriptedGeneration:
        if self.open_error is not None:
            raise self.open_error
        rounds = self.script(request) if callable(self.script) else self.script
        generation = ScriptedGeneration(
            [list(r) for r in rounds], then=self.then, on_draft=self._before_draft, cache_block=self.cache_block
        )
        with self._lock:
            self.opened.append(
                {
                    "messages": list(request.messages),
                    "max_new_tokens": request.max_new_tokens,
                    "temperature": request.temperature,
                    "top_p": request.top_p,
                    "seed": request.seed,
                    "constraint": request.constraint,
                }
            )
            self.generations.append(generation)
        return generation

    @property
    def capabilities(self) -> BackendCapabilities:
        """As configured: a scripted backend "enforces" a constraint by what its script drafts."""
        return BackendCapabilities(constraints=self.support)

    def _before_draft(self) -> None:
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise RuntimeError("the test never opened the gate")
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.on_draft is not None:
            self.on_draft()


class SeededBackend(ScriptedBackend):
    """The script as a function of the request's seed (or fixed rounds); it never runs out.

    What the LangChain, telemetry and dashboard tests use: once the script ends, every further
    round is one `padding<eos>` candidate, so a test need only script the rounds it looks at.
    """

    def __init__(self, script: Rounds | Callable[[int | None], Rounds], delay: float = 0.0) -> None:
        by_request: Script = (lambda request: script(request.seed)) if callable(script) else script
        super().__init__(by_request, then=[f"padding{EOS}"], delay_s=delay)


def two_segments(_: list[ChatMessage]) -> list[list[str]]:
    return [["Hello there, ", "spare one, "], ["friend." + EOS, "spare two." + EOS]]


class ServerBackend(ScriptedBackend):
    """The script as a function of the request's messages; what the chat service tests use."""

    def __init__(
        self,
        script: Callable[[list[ChatMessage]], Rounds] = two_segments,
        *,
        delay_s: float = 0.0,
        gate: threading.Event | None = None,
        open_error: BaseException | None = None,
    ) -> None:
        super().__init__(
            lambda request: script(list(request.messages)), delay_s=delay_s, gate=gate, open_error=open_error
        )
