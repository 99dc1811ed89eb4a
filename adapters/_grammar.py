"""Grammar-constrained drafting for the in-process backends: an `OutputConstraint` as an xgrammar matcher.

STARS drafts K candidates per round from one accepted prefix, so the grammar state is kept the same
way as the KV cache: one committed matcher per generation, forked once per candidate when a round
starts (a fork costs microseconds), each fork masking its row's logits before every sampled token
and accepting the token after. Committing a candidate advances the committed matcher by its token
ids; the forks of the round are dropped. The text the grammar accepts is the exact format that
`stars_guard.tools` parses (`CALL_PREFIX`, compact JSON, `CALL_SUFFIX`).

The only module that imports xgrammar (extras `local` and `llamacpp`); it is imported when the first
constrained generation opens, so unconstrained drafting never loads it.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stars_guard.errors import ConfigError
from stars_guard.tools import CALL_PREFIX, CALL_SUFFIX, TOOL_CALL_OPEN, OutputConstraint, ToolSpec, plain_json

COMPILED_CACHE_SIZE = 32  # compiled grammars kept per tokenizer: a service sees few distinct tool sets
CALL_SEPARATOR = "\n"  # between the blocks of an answer made only of calls
CALL_END = "}" + CALL_SUFFIX  # closes the call object, then the tag
_EMPTY_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


def xgrammar() -> Any:
    """The xgrammar module, or a `ConfigError` that says how to get it."""
    try:
        import xgrammar as xgr
    except ImportError as exc:
        raise ConfigError(
            "drafting under an output constraint (tools, a JSON schema) needs xgrammar: "
            "pip install xgrammar (or pip install 'stars-guard[local]')"
        ) from exc
    return xgr


# The grammar of a constraint ------------------------------------------------------------------


def constraint_key(constraint: OutputConstraint) -> str:
    """A stable text of every field of `constraint` (its schemas are mappings, so it is not hashable)."""
    fields = {
        "kind": constraint.kind,
        "schema": constraint.schema,
        "tools": [tool.as_dict() for tool in constraint.tools],
        "required": constraint.required,
        "parallel_tool_calls": constraint.parallel_tool_calls,
    }
    return json.dumps(plain_json(fields), sort_keys=True, ensure_ascii=False)


def call_begin(tool_name: str) -> str:
    """What a call of `tool_name` starts with, up to its arguments (the format `split_answer` parses)."""
    return f'{CALL_PREFIX}{{"name": {json.dumps(tool_name, ensure_ascii=False)}, "arguments": '


def arguments_schema(tool: ToolSpec) -> dict[str, Any]:
    """The schema a call's arguments must match: an object, `{}` for a tool that takes none."""
    schema = plain_json(tool.parameters)
    if not schema:
        return dict(_EMPTY_ARGUMENTS)
    if "type" not in schema and "properties" in schema:
        schema["type"] = "object"
    return schema


def compact_json_ebnf(schema: Mapping[str, Any]) -> str:
    """EBNF of one JSON value matching `schema`, written compactly (", " and ": " separators only)."""
    xgr = xgrammar()
    text = json.dumps(plain_json(schema))
    return str(xgr.Grammar.from_json_schema(text, any_whitespace=False, strict_mode=True))


def tool_calls_structural_tag(constraint: OutputConstraint) -> dict[str, Any]:
    """The xgrammar structural tag of a `tool_calls` constraint.

    required: only call blocks separated by a newline (one when calls are not parallel); auto: free
    text in which `<tool_call>` triggers a block that must be a valid call, then free text again.
    """
    tags = [
        {
            "type": "tag",
            "begin": call_begin(tool.name),
            "content": {"type": "grammar", "grammar": compact_json_ebnf(arguments_schema(tool))},
            "end": CALL_END,
        }
        for tool in constraint.tools
    ]
    single = not constraint.parallel_tool_calls
    if constraint.required:
        layout = {
            "type": "tags_with_separator",
            "tags": tags,
            "separator": CALL_SEPARATOR,
            "at_least_one": True,
            "stop_after_first": single,
        }
    else:
        layout = {
            "type": "triggered_tags",
            "triggers": [TOOL_CALL_OPEN],
            "tags": tags,
            "at_least_one": False,
            "stop_after_first": single,
        }
    return {"type": "structural_tag", "format": layout}


# Compiling, per tokenizer -----------------------------------------------------------------------


class ConstraintGrammars:
    """One tokenizer's grammar compiler and the constraints compiled for it (an LRU).

    Building the tokenizer's xgrammar view costs ~0.15 s (once); compiling a constraint a few ms
    to ~0.2 s, so a constraint that comes back (the same bound tools on every turn) is compiled once.
    """

    def __init__(self, tokenizer_info: Any, cache_size: int = COMPILED_CACHE_SIZE) -> None:
        xgr = xgrammar()
        self.tokenizer_info = tokenizer_info
        self.vocab_size = int(tokenizer_info.vocab_size)
        self.stop_ids = tuple(int(token) for token in tokenizer_info.stop_token_ids)
        self._compiler = xgr.GrammarCompiler(tokenizer_info, max_threads=1)
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def for_huggingface(cls, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> ConstraintGrammars:
        """For a Hugging Face tokenizer; `vocab_size` is the width of the model's logits (may be padded)."""
        xgr = xgrammar()
        width = max(int(vocab_size), len(tokenizer))
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=width, stop_token_ids=sorted(stop_ids))
        return cls(info)

    @classmethod
    def for_byte_pieces(cls, pieces: Sequence[bytes], stop_ids: Sequence[int]) -> ConstraintGrammars:
        """For a vocabulary given as each token's bytes (llama.cpp); a special token's piece is empty."""
        xgr = xgrammar()
        info = xgr.TokenizerInfo(
            list(pieces), xgr.VocabType.RAW, vocab_size=len(pieces), stop_token_ids=sorted(stop_ids)
        )
        return cls(info)

    def compiled(self, constraint: OutputConstraint) -> Any:
        """The compiled grammar of `constraint` (from the cache when it was compiled before)."""
        key = constraint_key(constraint)
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                return self._compiled[key]
        grammar = self._compile(constraint)
        with self._lock:
            self._compiled[key] = grammar
            self._compiled.move_to_end(key)
            while len(self._compiled) > self._cache_size:
                self._compiled.popitem(last=False)
        return grammar

    def matcher(self, constraint: OutputConstraint) -> ConstraintMatcher:
        """A matcher at the start of an answer under `constraint`."""
        xgr = xgrammar()
        return ConstraintMatcher(xgr.GrammarMatcher(self.compiled(constraint)), self.stop_ids)

    def _compile(self, constraint: OutputConstraint) -> Any:
        try:
            if constraint.kind == "json_schema":
                schema = json.dumps(plain_json(constraint.schema))
                return self._compiler.compile_json_schema(schema, any_whitespace=False, strict_mode=True)
            return self._compiler.compile_structural_tag(json.dumps(tool_calls_structural_tag(constraint)))
        except (RuntimeError, ValueError) as exc:  # xgrammar's errors for a schema it cannot compile
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"cannot draft under this {constraint.kind} constraint: {exc}") from exc


class LazyGrammars:
    """A backend's `ConstraintGrammars`, built on the first constrained `open` (never for unconstrained use)."""

    def __init__(self, build: Callable[[], ConstraintGrammars]) -> None:
        self._build = build
        self._grammars: ConstraintGrammars | None = None
        self._lock = threading.Lock()

    def get(self) -> ConstraintGrammars:
        with self._lock:
            if self._grammars is None:
                self._grammars = self._build()
            return self._grammars

    def matcher(self, constraint: OutputConstraint | None) -> ConstraintMatcher | None:
        """The committed matcher for a new generation; None without a constraint."""
        return None if constraint is None else self.get().matcher(constraint)


# Matching -------------------------------------------------------------------------------------


class ConstraintMatcher:
    """The grammar state after some tokens: forked per candidate, masked per step, advanced on commit."""

    def __init__(self, matcher: Any, stop_ids: Sequence[int]) -> None:
        self._matcher = matcher
        self.stop_ids = tuple(stop_ids)

    def fork(self) -> ConstraintMatcher:
        """An independent copy at the same state (a candidate's matcher for one round)."""
        return ConstraintMatcher(self._matcher.fork(), self.stop_ids)

    @property
    def must_end(self) -> bool:
        """Nothing but EOS may follow: the grammar accepted its stop token already."""
        return bool(self._matcher.is_terminated())

    @property
    def is_complete(self) -> bool:
        """The text so far is a whole answer (EOS allowed next)."""
        return bool(self._matcher.is_completed())

    def accept(self, token: int) -> None:
        """Move past a sampled token; a token the mask allowed is always accepted (else a bug: raise)."""
        if self.must_end and token in self.stop_ids:
            return
        if not self._matcher.accept_token(int(token)):
            raise RuntimeError(f"the grammar rejected token {token}, which its mask allowed")

    def advance(self, tokens: Sequence[int]) -> None:
        """Move past a committed candidate's tokens (each accepted by a fork of this state already)."""
        for token in tokens:
            self.accept(token)

    def fill(self, bitmask: Any, row: int) -> bool:
        """Write the allowed next tokens into `bitmask[row]`; False when every token is allowed."""
        return bool(self._matcher.fill_next_token_bitmask(bitmask, row))


def fork_rows(matcher: ConstraintMatcher | None, rows: int) -> list[ConstraintMatcher | None]:
    """One matcher per candidate row of a round (all None for an unconstrained generation)."""
    if matcher is None:
        return [None] * rows
    return [matcher.fork() for _ in range(rows)]


class TorchMasker:
    """Masks the logits rows of a torch batch with their matchers (`apply_token_bitmask_inplace`)."""

    def __init__(self, rows: int, vocab_size: int) -> None:
        xgr = xgrammar()
        self._xgr = xgr
        self.vocab_size = vocab_size
        self._bitmask = xgr.allocate_token_bitmask(rows, vocab_size)

    def apply(self, logits: Any, matchers: Sequence[ConstraintMatcher | None]) -> None:
        """Disallowed tokens to -inf, in place, on the rows that have a matcher; others untouched."""
        rows: list[int] = []
        for row, matcher in enumerate(matchers):
            if matcher is None:
                continue
            if matcher.must_end:
                _force_stop_torch(logits, row, matcher.stop_ids)
            elif matcher.fill(self._bitmask, row):
                rows.append(row)
        if not rows:
            return
        bitmask = self._bitmask if logits.device.type == "cpu" else self._bitmask.to(logits.device)
        width = min(int(logits.shape[-1]), self.vocab_size)
        self._xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=width, indices=rows)


def _force_stop_torch(logits: Any, row: int, stop_ids: Sequence[int]) -> None:
    kept = logits[row, list(stop_ids)].clone()
    logits[row].fill_(float("-inf"))
    logits[row, list(stop_ids)] = kept


class NumpyMasker:
    """Masks numpy logits rows (llama.cpp) with their matchers; returns a masked copy."""

    def __init__(self, rows: int, vocab_size: int) -> None:
        import numpy as np

        self._np = np
        self.vocab_size = vocab_size
        self._bitmask = np.zeros((rows, (vocab_size + 31) // 32), dtype=np.int32)

    def apply(self, logits: Any, matchers: Sequence[ConstraintMatcher | None]) -> Any:
        """`logits` with disallowed tokens at -inf on the rows that have a matcher (a new array when masked)."""
        np = self._np
        rows: list[int] = []
        forced: list[int] = []
        for row, matcher in enumerate(matchers):
            if matcher is None:
                continue
            if matcher.must_end:
                forced.append(row)
            elif matcher.fill(self._bitmask, row):
                rows.append(row)
        if not rows and not forced:
            return logits
        masked = np.array(logits, dtype=np.float32, copy=True)
        width = masked.shape[-1]
        if rows:
            # Token t is bit t % 32 of word t // 32: little-endian bytes, bits unpacked least first.
            words = self._bitmask[rows].astype("<i4", copy=False).view(np.uint8)
            allowed = np.unpackbits(words, axis=1, bitorder="little")[:, :width].astype(bool)
            if allowed.shape[1] < width:  # logits wider than the tokenizer: the extra ids are never allowed
                allowed = np.pad(allowed, ((0, 0), (0, width - allowed.shape[1])))
            masked[rows] = np.where(allowed, masked[rows], -np.inf)
        for row in forced:
            stops = list(matchers[row].stop_ids)  # type: ignore[union-attr]
            kept = masked[row, stops].copy()
            masked[row] = -np.inf
            masked[row, stops] = kept
        return masked
