"""Grammar-constrained drafting for the in-process backends: an `OutputConstraint` as an xgrammar matcher.

STARS drafts K candidates per round from one accepted prefix, so the grammar state is kept the same
way as the KV cache: one committed matcher per generation, forked once per candidate when a round
starts (a fork costs microseconds), each fork masking its row's logits before every sampled token
and accepting the token after. Committing a candidate advances the committed matcher by its token
ids; the forks of the round are dropped. The text the grammar accepts is the exact format that
`stars_guard.tools` parses (`CALL_PREFIX`, compact JSON, `CALL_SUFFIX`).

The grammar does not know the token budget, so each generation also has a `BudgetKeeper`, forked
and committed with the matcher: it keeps in reserve the tokens that close the answer (the shortest
completion from `stars_guard.json_closing`, spelled in the model's vocabulary) and makes a row
write that closing when the budget left meets it, so a forced call or a JSON answer always ends
valid within `max_new_tokens`; a budget under the shortest answer is a `ConstraintBudgetError`.

The only module that imports xgrammar (extras `local` and `llamacpp`); it is imported when the first
constrained generation opens, so unconstrained drafting never loads it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stars_guard.errors import ConfigError, ConstraintBudgetError
from stars_guard.json_closing import CALL_END, CALL_SEPARATOR, Closer, describe
from stars_guard.json_closing import arguments_schema as _arguments_schema
from stars_guard.json_closing import call_begin as call_begin
from stars_guard.tools import TOOL_CALL_OPEN, OutputConstraint, ToolSpec, plain_json

COMPILED_CACHE_SIZE = 32  # compiled grammars kept per tokenizer: a service sees few distinct tool sets
__all__ = ["CALL_END", "CALL_SEPARATOR", "arguments_schema", "call_begin"]
_log = logging.getLogger(__name__)


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


def arguments_schema(tool: ToolSpec) -> dict[str, Any]:
    """The schema a call's arguments must match: an object, `{}` for a tool that takes none."""
    return _arguments_schema(tool.parameters)


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

    def __init__(
        self,
        tokenizer_info: Any,
        cache_size: int = COMPILED_CACHE_SIZE,
        *,
        special_ids: Sequence[int] = (),
        end_token: int | None = None,
    ) -> None:
        """`special_ids`: tokens that are never text (never written into a closing); `end_token`: the
        stop token that ends a closed answer (default: the lowest stop id)."""
        xgr = xgrammar()
        self.tokenizer_info = tokenizer_info
        self.vocab_size = int(tokenizer_info.vocab_size)
        self.stop_ids = tuple(int(token) for token in tokenizer_info.stop_token_ids)
        self.end_token = end_token if end_token in self.stop_ids else min(self.stop_ids, default=None)
        self._special_ids = frozenset(int(token) for token in special_ids) | frozenset(self.stop_ids)
        self._vocab: VocabPieces | None = None
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
        special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special |= {int(token) for token, added_token in added.items() if getattr(added_token, "special", False)}
        return cls(info, special_ids=sorted(special), end_token=getattr(tokenizer, "eos_token_id", None))

    @classmethod
    def for_byte_pieces(
        cls, pieces: Sequence[bytes], stop_ids: Sequence[int], end_token: int | None = None
    ) -> ConstraintGrammars:
        """For a vocabulary given as each token's bytes (llama.cpp); a special token's piece is empty."""
        xgr = xgrammar()
        info = xgr.TokenizerInfo(
            list(pieces), xgr.VocabType.RAW, vocab_size=len(pieces), stop_token_ids=sorted(stop_ids)
        )
        return cls(info, end_token=end_token)

    @property
    def vocab(self) -> VocabPieces:
        """Each token's bytes as the grammar reads them (special tokens empty), built on first use."""
        with self._lock:
            if self._vocab is None:
                pieces = [bytes(piece) for piece in self.tokenizer_info.decoded_vocab]
                self._vocab = VocabPieces(
                    [b"" if token in self._special_ids else piece for token, piece in enumerate(pieces)]
                )
            return self._vocab

    def keeper(self, constraint: OutputConstraint, max_new_tokens: int) -> BudgetKeeper | None:
        """The budget keeper of a new answer under `constraint`, checked against `max_new_tokens`.

        Raises `ConstraintBudgetError` when even the shortest valid answer does not fit. None when the
        closing cannot be computed for this schema (a feature `json_closing` does not handle) or the
        grammar refuses the closing text: the answer is then drafted without a reserve, as before.
        """
        closer = Closer(constraint)
        keeper = BudgetKeeper(closer, self.vocab, max_new_tokens, self.end_token)
        plan = keeper.plan_from(b"")
        if plan is None:
            _log.warning("no budget reserve for this %s constraint: its closing cannot be computed", constraint.kind)
            return None
        if not self._accepts(constraint, plan):
            _log.warning("no budget reserve for this %s constraint: the grammar refuses its closing", constraint.kind)
            return None
        if len(plan) > max_new_tokens:
            raise ConstraintBudgetError(len(plan), max_new_tokens, describe(constraint))
        return keeper

    def _accepts(self, constraint: OutputConstraint, plan: Sequence[int]) -> bool:
        """Whether a fresh matcher takes `plan` (text tokens, then the end token where one is planned)."""
        matcher = self.matcher(constraint)
        try:
            for token in plan:
                if token != END:
                    matcher.accept(token)
        except RuntimeError:
            return False
        return matcher.is_complete or not needs_end(constraint)

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

    def keeper(self, constraint: OutputConstraint | None, max_new_tokens: int) -> BudgetKeeper | None:
        """The budget keeper for a new generation (`ConstraintGrammars.keeper`); None without a constraint."""
        return None if constraint is None else self.get().keeper(constraint, max_new_tokens)


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


# Keeping the tokens that close an answer --------------------------------------------------------

END = -1  # in a plan: the end token (a stop token) after the closing text


class VocabPieces:
    """A vocabulary as each token's bytes, and a greedy tokenizer of closing text over it.

    Greedy longest match is not the model's own tokenisation, but any token sequence that spells
    the right bytes is one the byte-level grammar accepts, and its length is exact for the plan that
    is then followed token by token. Special tokens (empty pieces) are never used.
    """

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.pieces = list(pieces)
        self._index: dict[bytes, int] = {}
        for token, piece in enumerate(self.pieces):
            if piece and piece not in self._index:
                self._index[piece] = token
        self._longest = min(48, max((len(piece) for piece in self._index), default=1))

    def piece(self, token: int) -> bytes:
        return self.pieces[token] if 0 <= token < len(self.pieces) else b""

    def encode(self, data: bytes) -> list[int] | None:
        """Tokens that spell `data` exactly (longest piece first); None if a byte has no token."""
        tokens: list[int] = []
        position = 0
        while position < len(data):
            for length in range(min(self._longest, len(data) - position), 0, -1):
                token = self._index.get(data[position : position + length])
                if token is not None:
                    tokens.append(token)
                    position += length
                    break
            else:
                return None
        return tokens


class BudgetKeeper:
    """Keeps an answer's closing within its token budget: `max_new_tokens` for the whole answer.

    Holds the answer's bytes so far, the tokens it has used and, once the budget meets the reserve,
    the plan it follows: the closing text's tokens, then the end token where the answer must end.
    Forked per candidate row like the matcher; committing a candidate keeps its row's keeper, so a
    plan begun in one segment goes on in the next. Invariant: the tokens that close the answer from
    where it stands never exceed the tokens left (true at open, where `ConstraintBudgetError` refuses
    a budget under the shortest answer, and kept by every `choose`).
    """

    def __init__(
        self,
        closer: Closer,
        vocab: VocabPieces,
        max_new_tokens: int,
        end_token: int | None,
        text: bytes = b"",
        used: int = 0,
        plan: list[int] | None = None,
    ) -> None:
        self.closer = closer
        self.vocab = vocab
        self.max_new_tokens = max_new_tokens
        self.end_token = end_token
        self.text = text
        self.used = used
        self.plan = plan
        self.forced = 0  # tokens this keeper replaced with its plan's (what the reserve cost the model)

    def fork(self) -> BudgetKeeper:
        keeper = BudgetKeeper(
            self.closer,
            self.vocab,
            self.max_new_tokens,
            self.end_token,
            self.text,
            self.used,
            None if self.plan is None else list(self.plan),
        )
        keeper.forced = self.forced
        return keeper

    @property
    def left(self) -> int:
        return self.max_new_tokens - self.used

    def choose(self, token: int, matcher: ConstraintMatcher | None, stop_ids: Sequence[int]) -> int:
        """The token the row takes: `token` (sampled under the grammar) when the closing still fits
        after it, else the next token of the plan that closes the answer from here."""
        if self.plan is None and token not in stop_ids:
            after = self.text + self.vocab.piece(token)
            if not self._fits(after, self.left - 1):
                plan = self.plan_from(self.text)
                if plan is not None and _plan_accepted(matcher, plan):
                    self.plan = plan
        if self.plan:
            planned = self.plan.pop(0)
            chosen = (token if token in stop_ids else self.end_token) if planned == END else planned
            if chosen is not None and chosen != token:
                self.forced += 1
                token = chosen
            if not self.plan:
                self.plan = None  # closed: under 'auto' the text goes on free
        self.used += 1
        if token not in stop_ids:
            self.text += self.vocab.piece(token)
        return token

    def plan_from(self, text: bytes) -> list[int] | None:
        """The tokens that close the answer after `text` (then `END` where it must end); None if unknown."""
        closing = self._closing(text)
        if closing is None:
            return None
        tokens = self.vocab.encode(closing)
        if tokens is None:
            return None
        return [*tokens, END] if self.closer.needs_end else tokens

    def needed(self, text: bytes) -> int | None:
        """Tokens that close the answer after `text`, the end token included where one is needed."""
        plan = self.plan_from(text)
        return None if plan is None else len(plan)

    def _fits(self, text: bytes, left: int) -> bool:
        """Whether the closing after `text` fits in `left` tokens.

        A closing that cannot be computed (e.g. a key's non-ASCII character cut between tokens) does
        not fit: the row then follows the plan from the state before, whose closing is known.
        """
        closing = self._closing(text)
        if closing is None:
            return False
        end = 1 if self.closer.needs_end else 0
        if len(closing) + end <= left:  # every token spells at least one byte
            return True
        tokens = self.vocab.encode(closing)
        return tokens is not None and len(tokens) + end <= left

    def _closing(self, text: bytes) -> bytes | None:
        """The bytes that close the answer after `text` (a character cut mid-way is completed first)."""
        head, tail = _split_utf8(text)
        completion = _complete_utf8(tail)
        try:
            so_far = (head + tail + completion).decode("utf-8")
        except UnicodeDecodeError:
            return None
        closing = self.closer.closing(so_far)
        return None if closing is None else completion + closing.encode("utf-8")


def needs_end(constraint: OutputConstraint) -> bool:
    """Whether an answer under `constraint` ends where its JSON (or its forced calls) close."""
    return constraint.kind == "json_schema" or constraint.required


def _plan_accepted(matcher: ConstraintMatcher | None, plan: Sequence[int]) -> bool:
    """Whether the row's grammar takes the plan's text tokens from where it stands (checked on a fork)."""
    if matcher is None:
        return True
    fork = matcher.fork()
    try:
        for token in plan:
            if token != END:
                fork.accept(token)
    except RuntimeError:
        _log.warning("the grammar refused a planned closing; the answer goes on without a reserve")
        return False
    return True


def _split_utf8(data: bytes) -> tuple[bytes, bytes]:
    """(`data` up to its last whole character, the bytes of a character cut at the end)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue
        width = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return (data[:-back], data[-back:]) if width > back else (data, b"")
    return data, b""


def _complete_utf8(tail: bytes) -> bytes:
    """The fewest bytes that finish a character begun with `tail` (b"" for none)."""
    if not tail:
        return b""
    lead = tail[0]
    width = 2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else 4
    low = {0xE0: 0xA0, 0xF0: 0x90}.get(lead, 0x80)  # no overlong forms
    missing = width - len(tail)
    if len(tail) == 1 and missing:
        return bytes([low]) + b"\x80" * (missing - 1)
    return b"\x80" * missing
