"""Text helpers the adapters share: tokenizers, BOS handling, token offsets, the draft ledger.

Remote servers see text or token ids, never our tokenizer objects, so each adapter needs the same
few operations: load the tokenizer once, avoid a second BOS when a server tokenises templated text
with special tokens added, and turn a drafted segment into a `Candidate` whose `token_ends` let the
engine cut at stop strings. Rendering chat prompts (and keeping message content from becoming
control tokens) is in `_chat.py`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stars_guard.capabilities import GenerationCapabilities
from stars_guard.errors import ModelNotFoundError
from stars_guard.protocols import Candidate

_TOKENIZERS: dict[str, Any] = {}
_LOCK = threading.Lock()
_DECODE_WINDOW = 8  # accepted tokens decoded with a draft, so merges and UTF-8 pieces come out right


def load_tokenizer(source: str | Path) -> Any:
    """A Hugging Face tokenizer from a directory, a .gguf file or a hub id; loaded once per process."""
    key = str(source)
    with _LOCK:
        if key not in _TOKENIZERS:
            from transformers import AutoTokenizer

            path = Path(key).expanduser()
            try:
                if path.suffix == ".gguf":
                    if not path.is_file():
                        raise ModelNotFoundError(f"GGUF file {path} does not exist")
                    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
                else:
                    tokenizer = AutoTokenizer.from_pretrained(str(path) if path.exists() else key)
            except OSError as exc:
                raise ModelNotFoundError(
                    f"could not load a tokenizer from {key!r}: {exc}. Pass a local model directory (the one the "
                    "server runs) so the chat template and token offsets match the server's."
                ) from exc
            _TOKENIZERS[key] = tokenizer
        return _TOKENIZERS[key]


def adds_bos(tokenizer: Any) -> bool:
    """Whether encoding with special tokens prepends BOS (then templated text must not carry one)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def strip_leading_bos(text: str, bos_token: str | None, server_adds_bos: bool) -> str:
    """Templated text that starts with BOS, sent to a server that adds BOS itself, would get two."""
    if server_adds_bos and bos_token and text.startswith(bos_token):
        return text[len(bos_token) :]
    return text


def eos_ids(tokenizer: Any, extra: Sequence[int] = ()) -> frozenset[int]:
    ids = {int(value) for value in extra}
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


# What a decoder writes for bytes that are not (yet) a whole UTF-8 character.
REPLACEMENT = "\ufffd"


def ends_from_pieces(pieces: Sequence[str]) -> tuple[str, tuple[int, ...]]:
    """Concatenated text and per-token end offsets from per-token text pieces."""
    ends: list[int] = []
    total = 0
    for piece in pieces:
        total += len(piece)
        ends.append(total)
    return "".join(pieces), tuple(ends)


def candidate_from_ids(tokenizer: Any, context_ids: Sequence[int], ids: Sequence[int], hit_eos: bool) -> Candidate:
    """A candidate from sampled token ids, decoded as a continuation of `context_ids`.

    Decoding with a few accepted tokens in front keeps leading spaces and multi-token characters
    right; each token's end offset is where the text decoded so far stops. A character whose bytes
    the segment ends inside (byte-level tokenizers split CJK characters and emoji over tokens)
    decodes to U+FFFD: it is held back, not part of this candidate's text, and the next segment,
    decoded after these tokens, writes it whole. Without this a character split at a segment
    boundary came out as two replacement characters.
    """
    text_ids = list(ids[:-1] if hit_eos else ids)
    context = list(context_ids[-_DECODE_WINDOW:])
    # What earlier segments emitted of the context: its unfinished last character was held back.
    emitted = tokenizer.decode(context, skip_special_tokens=True).rstrip(REPLACEMENT)
    ends: list[int] = []
    for count in range(1, len(text_ids) + 1):
        piece = tokenizer.decode(context + text_ids[:count], skip_special_tokens=True).rstrip(REPLACEMENT)
        ends.append(max(len(piece) - len(emitted), ends[-1] if ends else 0))
    full = tokenizer.decode(context + text_ids, skip_special_tokens=True)
    text = full[len(emitted) :] if full.startswith(emitted) else tokenizer.decode(text_ids, skip_special_tokens=True)
    text = text.rstrip(REPLACEMENT)  # an unfinished character waits for the next segment
    return Candidate(
        text, tuple(int(i) for i in ids), "eos" if hit_eos else "length", tuple(min(e, len(text)) for e in ends)
    )


def candidate_from_text(tokenizer: Any, text: str, hit_eos: bool, eos_id: int | None) -> Candidate:
    """A candidate from a server that returned only text: ids and offsets by tokenizing that text.

    Exact for the text; the ids may differ from those the server sampled where a tokeniser would
    merge differently (the price of text continuation, documented in docs/adapters.md).
    """
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ends = [int(end) for _, end in encoded["offset_mapping"]]
    except NotImplementedError:  # a slow (Python) tokenizer has no offsets: count tokens only
        encoded = tokenizer(text, add_special_tokens=False)
        ends = []
    ids = [int(i) for i in encoded["input_ids"]]
    for index in range(1, len(ends)):  # offsets never go backwards
        ends[index] = max(ends[index], ends[index - 1])
    if hit_eos and eos_id is not None:
        ids.append(int(eos_id))
    return Candidate(text, tuple(ids), "eos" if hit_eos else "length", tuple(min(e, len(text)) for e in ends))


class DraftLedger:
    """Which candidates a stateless (HTTP) generation may commit: the latest draft's, or the retained one.

    A stateless server needs nothing kept to continue from a candidate later, so `retain` is only
    bookkeeping; `take` enforces the protocol's commit rule in one place for every HTTP backend.
    """

    def __init__(self) -> None:
        self.drafted: list[Candidate] = []
        self.retained: Candidate | None = None

    def record(self, candidates: list[Candidate]) -> list[Candidate]:
        self.drafted = candidates
        return list(candidates)

    def retain(self, candidate: Candidate) -> None:
        if any(candidate is drafted for drafted in self.drafted):
            self.retained = candidate

    def take(self, candidate: Candidate) -> None:
        """Check that `candidate` may be committed, then forget this round."""
        if not (any(candidate is drafted for drafted in self.drafted) or candidate is self.retained):
            raise ValueError("commit() needs a candidate from the latest draft or the retained one")
        if candidate.finish_reason == "eos":
            raise ValueError("a candidate that ended with EOS cannot be continued")
        self.clear()

    def clear(self) -> None:
        self.drafted, self.retained = [], None


class StatelessGeneration:
    """Base of the HTTP generations: the server keeps nothing between rounds, so a candidate is all
    a later commit needs. Counts drafting calls and retries and enforces the commit rule
    (`DraftLedger`); a subclass drafts one round (`_draft_round`) and extends its prompt (`_accept`).
    """

    capabilities = GenerationCapabilities(reports_retries=True)

    def __init__(self) -> None:
        self._ledger = DraftLedger()
        self._calls = 0
        self._retries = 0
        self._closed = False

    @property
    def llm_calls(self) -> int:
        return self._calls

    @property
    def backend_retries(self) -> int:
        return self._retries

    def draft(self, num_candidates: int, max_tokens: int) -> list[Candidate]:
        if self._closed:
            raise RuntimeError("this generation is closed")
        self._calls += 1
        candidates, retries = self._draft_round(num_candidates, max_tokens)
        self._retries += retries
        return self._ledger.record(candidates)

    def retain(self, candidate: Candidate) -> None:
        self._ledger.retain(candidate)  # committing later needs only the candidate itself

    def commit(self, candidate: Candidate) -> None:
        self._ledger.take(candidate)
        self._accept(candidate)

    def close(self) -> None:
        self._closed = True
        self._ledger.clear()

    def _draft_round(self, num_candidates: int, max_tokens: int) -> tuple[list[Candidate], int]:
        """The round's candidates and the retries the server calls took."""
        raise NotImplementedError

    def _accept(self, candidate: Candidate) -> None:
        """Extend the accepted prefix the next round's prompt is built from."""
        raise NotImplementedError
