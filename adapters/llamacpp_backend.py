"""`LlamaCppBackend`: llama-cpp-python in process, the fastest CPU path (extra `llamacpp`).

The accepted prefix lives once in llama.cpp's KV cache as sequence 0. A round of K drafts forks it
into sequences 1..K: `llama_memory_seq_cp` on a unified KV cache only tags the prefix's cells with
the new sequence ids (a snapshot of the prefix state, shared, not copied), and the K candidates
then advance in lockstep, one batched `llama_decode` per token for all of them. Committing a
candidate re-tags its cells as sequence 0 and drops the others; a retained (best-so-far)
candidate keeps its cells under a reserved sequence id until it is committed or replaced. So
every token is computed once: `llm_forward_tokens = prompt_tokens + tokens evaluated`, where a
draft's EOS token is never evaluated (nothing can follow it).

Sampling (temperature, then nucleus on the tempered distribution, seeded) is done in numpy on the
logits llama.cpp returns, with the same semantics as `TransformersBackend`. Each generation owns
a llama.cpp context for its lifetime (taken from a per-backend pool), so concurrent requests never
share a KV cache.

Under an `OutputConstraint` each candidate forks the generation's grammar matcher, built over the
tokens' byte pieces, and its numpy logits are masked before every token (`_grammar.py`); committing
advances the matcher by the candidate's ids; each row's budget keeper writes the answer's closing
when the budget left meets it (`_grammar.BudgetKeeper`). Entropy cuts read the unmasked logits.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stars_guard.adapters import _chat
from stars_guard.adapters._grammar import (
    BudgetKeeper,
    ConstraintGrammars,
    ConstraintMatcher,
    LazyGrammars,
    NumpyMasker,
    fork_rows,
)
from stars_guard.adapters._numpy_sampling import complete_utf8, entropy, incomplete_utf8_tail, sample
from stars_guard.capabilities import BackendCapabilities, GenerationCapabilities
from stars_guard.errors import BackendError, ContextWindowExceededError, ModelNotFoundError
from stars_guard.messages import ChatMessage
from stars_guard.protocols import Candidate, OpenRequest
from stars_guard.tools import OutputConstraint

_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()
_BACKENDS: weakref.WeakSet[LlamaCppBackend] = weakref.WeakSet()
_EXITING = False


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelNotFoundError(
            "LlamaCppBackend needs llama-cpp-python: pip install 'stars-guard[llamacpp]' (builds from source, ~4 min)"
        ) from exc
    return llama_cpp


def load_llama(model_path: str | Path) -> Any:
    """The `llama_cpp.Llama` owning the weights and vocabulary of a GGUF file; loaded once per process."""
    key = str(Path(model_path).expanduser())
    with _MODELS_LOCK:
        if key not in _MODELS:
            if not Path(key).is_file():
                raise ModelNotFoundError(f"GGUF file {key} does not exist")
            llama_cpp = _llama_cpp()
            # A tiny context of its own: generations get their own, larger, multi-sequence contexts.
            _MODELS[key] = llama_cpp.Llama(key, n_ctx=64, n_batch=64, verbose=False)
        return _MODELS[key]


def default_threads() -> int:
    """One core fewer than the machine has (at least one).

    ggml's worker threads spin at barriers, so a decode slows down sharply when any of them is
    descheduled: measured here on 2 busy cores, 2 threads were 4-15x slower than 1. Leaving a core
    to the reward model and Python keeps llama.cpp's threads running.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class LlamaCppBackend:
    """Drafts candidate segments from a GGUF model with llama.cpp (see the module docstring)."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        max_candidates: int = 64,
        chat_template: str | None = None,
    ) -> None:
        """`chat_template`: a Jinja chat template to render prompts with instead of the GGUF's own."""
        self._llama_cpp = _llama_cpp()
        if model is None:
            from stars_guard.models import ensure_llamacpp_gguf

            model = ensure_llamacpp_gguf()  # F16: llama.cpp batches its CPU matmuls (Q4_1: it does not)
        self.model_path = Path(model).expanduser()
        self.llm = load_llama(self.model_path)
        llama_cpp = self._llama_cpp
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        trained = int(llama_cpp.llama_model_n_ctx_train(self.llm.model))
        self.n_ctx = min(n_ctx, trained) if trained > 0 else n_ctx
        self.context_window = self.n_ctx  # prompt + answer must fit the context we allocate
        self.n_threads = n_threads or default_threads()
        self.n_batch = max(n_batch, max_candidates)
        # Sequence 0: the accepted prefix; 1..K: a round's candidates; K+1: the retained candidate.
        self.max_candidates = max(1, min(max_candidates, int(llama_cpp.llama_max_parallel_sequences()) - 2))
        self.retained_seq = self.max_candidates + 1
        self._formatter = self._chat_formatter(chat_template)
        self._knows_tools: bool | None = None
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self._bos_id = int(llama_cpp.llama_vocab_bos(self.vocab))
        self._bos_text = self._piece(self._bos_id, special=True).decode("utf-8", "replace")
        self._controls = self._control_tokens()
        self._pieces: dict[int, bytes] = {}
        self._pool: list[_Context] = []
        self._pool_lock = threading.Lock()
        self.grammars = LazyGrammars(self._build_grammars)
        _BACKENDS.add(self)

    @property
    def model_name(self) -> str:
        return self.model_path.stem

    def encode_chat(self, messages: Sequence[ChatMessage], constraint: OutputConstraint | None = None) -> list[int]:
        """Token ids of the chat-templated prompt (the GGUF's own template), ready for the assistant's turn.

        The template's control tokens are parsed (`special=True`); message content is tokenised
        with `special=False`, so control-token text a user writes stays text. Without such text
        the ids are those of the whole rendered prompt tokenised with `special=True`. Tools go to
        the template where it knows them, else into the text format (`_chat.template_input`).
        """
        controls = tuple(sorted(self._controls, key=len, reverse=True))
        turns, tools = _chat.template_input(
            messages, constraint, knows_tools=self._template_knows_tools, special_token_strings=controls
        )
        render = functools.partial(self._render, tools=tools)
        if _chat.may_forge([str(turn["content"]) for turn in turns], controls):
            ids = self._split_ids(turns, render)
            if ids is not None:
                return ids
            turns = _chat.neutralize_turns(turns, controls)  # the exact split failed: break the strings instead
        return self._tokenize_rendered(render(turns))

    def _render(self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        if self._formatter is not None:
            return str(self._formatter(messages=turns, tools=tools).prompt)
        return _chat.transcript(turns)

    def _template_knows_tools(self) -> bool:
        if self._knows_tools is None:
            self._knows_tools = self._formatter is not None and _chat.template_knows_tools(
                lambda turns, tools: self._render(turns, tools)
            )
        return self._knows_tools

    def _tokenize_rendered(self, text: str) -> list[int]:
        """The whole prompt with special-token parsing on, BOS added unless the template wrote it."""
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def _split_ids(
        self, turns: list[dict[str, Any]], render: Callable[[list[dict[str, Any]]], str]
    ) -> list[int] | None:
        """Template control tokens as tokens, everything between with `special=False`; None if untrustworthy."""
        layout = _chat.layout_chat(render, turns)
        if layout is None:
            return None
        if not _chat.touches_content(layout, tuple(self._controls)):  # only content's edges looked like a token
            return self._tokenize_rendered(layout.text)
        parts = _chat.split_controls(layout, self._controls)
        ids = _chat.encode_split(
            parts, lambda piece: self.llm.tokenize(piece.encode("utf-8"), add_bos=False, special=False)
        )
        starts_with_bos = bool(parts) and isinstance(parts[0], _chat.ControlToken) and parts[0].id == self._bos_id
        control_ids = {control.id for control in self._controls.values()}
        if sum(token in control_ids for token in ids) != sum(isinstance(part, _chat.ControlToken) for part in parts):
            return None
        usual = self.llm.tokenize(layout.text.encode("utf-8"), add_bos=False, special=True)
        if self.llm.detokenize(ids, special=True) != self.llm.detokenize(usual, special=True):
            return None  # the split would change the text the model sees
        if self._add_bos and not starts_with_bos:
            ids.insert(0, self._bos_id)
        return ids

    # Every segment is drafted under the grammar (a matcher forked per candidate, masked per token).
    capabilities = BackendCapabilities(constraints="segments")

    def open(self, request: OpenRequest) -> LlamaCppGeneration:
        prompt_ids = self.encode_chat(request.messages, request.constraint)
        if self.context_window and len(prompt_ids) + request.max_new_tokens > self.context_window:
            raise ContextWindowExceededError(len(prompt_ids), request.max_new_tokens, self.context_window)
        matcher = self.grammars.matcher(request.constraint)
        keeper = self.grammars.keeper(request.constraint, request.max_new_tokens)
        context = self._acquire()
        try:
            return LlamaCppGeneration(
                self,
                context,
                prompt_ids,
                request.temperature,
                request.top_p,
                request.seed,
                matcher=matcher,
                keeper=keeper,
            )
        except BaseException:
            self._release(context)
            raise

    def close(self) -> None:
        """Free the pooled llama.cpp contexts (the weights stay loaded for the process)."""
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for context in pool:
            context.free()

    def is_end(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int) -> bytes:
        """The bytes a token adds to the text (special tokens add none)."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = self._piece(token, special=False)
        return cached

    # Internals ------------------------------------------------------------------------------------

    def _build_grammars(self) -> ConstraintGrammars:
        """The grammar compiler over this vocabulary: each token's bytes, EOG tokens as the stop tokens."""
        pieces = [self.piece(token) for token in range(self.n_vocab)]
        stops = [t for t in range(self.n_vocab) if self.is_end(t)]
        eot = int(self._llama_cpp.llama_vocab_eot(self.vocab))
        end = eot if eot in stops else int(self._llama_cpp.llama_vocab_eos(self.vocab))
        return ConstraintGrammars.for_byte_pieces(pieces, stops, end_token=end)

    def _piece(self, token: int, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = self._llama_cpp.llama_token_to_piece(self.vocab, token, buffer, 64, 0, special)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = self._llama_cpp.llama_token_to_piece(self.vocab, token, buffer, -size, 0, special)
        return buffer.raw[: max(size, 0)]

    def _control_tokens(self) -> dict[str, _chat.ControlToken]:
        """Tokens that `special=True` parsing makes of their text (llama.cpp's control and unknown tokens).

        User-defined tokens are left out: llama.cpp parses them with `special=False` too, as text.
        """
        llama_cpp = self._llama_cpp
        parsed = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        controls: dict[str, _chat.ControlToken] = {}
        for token in range(self.n_vocab):
            attr = int(llama_cpp.llama_vocab_get_attr(self.vocab, token))
            if not attr & parsed:
                continue
            text = self._piece(token, special=True).decode("utf-8", "replace")
            if text and text not in controls:
                controls[text] = _chat.ControlToken(
                    text,
                    token,
                    lstrip=bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP),
                    rstrip=bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP),
                )
        return controls

    def _chat_formatter(self, template: str | None) -> Any:
        template = template or self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama_cpp = self._llama_cpp
        eos = self._piece(int(llama_cpp.llama_vocab_eos(self.vocab)), special=True).decode("utf-8", "replace")
        bos = self._piece(int(llama_cpp.llama_vocab_bos(self.vocab)), special=True).decode("utf-8", "replace")
        return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=True)

    def _acquire(self) -> _Context:
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        return _Context(self)

    def _release(self, context: _Context) -> None:
        context.clear()
        with self._pool_lock:
            self._pool.append(context)


@atexit.register
def _release_at_exit() -> None:
    """Free contexts before the weights they use, while llama_cpp's module state still exists."""
    global _EXITING
    for backend in list(_BACKENDS):
        backend.close()
    _EXITING = True
    with _MODELS_LOCK:
        for llm in _MODELS.values():
            with contextlib.suppress(Exception):
                llm.close()
        _MODELS.clear()


class _Context:
    """A llama.cpp context with a unified, multi-sequence KV cache and a reusable batch."""

    def __init__(self, backend: LlamaCppBackend) -> None:
        llama_cpp = backend._llama_cpp
        self._llama_cpp = llama_cpp
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = backend.n_ctx
        params.n_batch = backend.n_batch
        params.n_ubatch = backend.n_batch
        params.n_seq_max = backend.max_candidates + 2
        params.kv_unified = True  # sequences share the prefix's cells instead of copying them
        params.n_threads = backend.n_threads
        params.n_threads_batch = backend.n_threads
        self.ctx = llama_cpp.llama_init_from_model(backend.llm.model, params)
        if not self.ctx:
            raise BackendError(f"llama.cpp could not create a context (n_ctx={backend.n_ctx}) for {backend.model_path}")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch_size = backend.n_batch
        self.batch = llama_cpp.llama_batch_init(self.batch_size, 0, 1)
        self.n_vocab = backend.n_vocab

    def decode(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        """Evaluate (token, position, sequence, wants_logits) items, in chunks of the batch size."""
        llama_cpp, batch = self._llama_cpp, self.batch
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            batch.n_tokens = len(chunk)
            for index, (token, position, sequence, logits) in enumerate(chunk):
                batch.token[index] = token
                batch.pos[index] = position
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = sequence
                batch.logits[index] = logits
            status = llama_cpp.llama_decode(self.ctx, batch)
            if status != 0:
                hint = " (the KV cache is full: raise n_ctx)" if status == 1 else ""
                raise BackendError(f"llama_decode failed with status {status}{hint}")

    def logits(self, index: int) -> np.ndarray:
        """A copy of the logits of the `index`-th logits-producing item of the last decode."""
        pointer = self._llama_cpp.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float32, copy=True)

    def copy_sequence(self, source: int, target: int, start: int = -1, end: int = -1) -> None:
        self._llama_cpp.llama_memory_seq_cp(self.memory, source, target, start, end)

    def remove(self, sequence: int, start: int = -1, end: int = -1) -> None:
        self._llama_cpp.llama_memory_seq_rm(self.memory, sequence, start, end)

    def clear(self) -> None:
        self._llama_cpp.llama_memory_clear(self.memory, True)

    def free(self) -> None:
        if self.ctx is not None:
            self._llama_cpp.llama_batch_free(self.batch)
            self._llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def __del__(self) -> None:  # contexts live as long as their backend's pool
        if not _EXITING:  # at exit the weights may be gone already: let the process reclaim it all
            with contextlib.suppress(Exception):
                self.free()


@dataclass
class _Drafted:
    """A candidate of the latest round (or the retained one) and what continuing it needs."""

    candidate: Candidate
    sequence: int  # where its KV cells live
    logits: np.ndarray | None  # next-token logits after its last token; None if it ended with EOS
    keeper: BudgetKeeper | None = None  # the budget keeper after its tokens (None: unconstrained)


class LlamaCppGeneration:
    """One answer on a `LlamaCppBackend` (see the module docstring)."""

    def __init__(
        self,
        backend: LlamaCppBackend,
        context: _Context,
        prompt_ids: list[int],
        temperature: float,
        top_p: float,
        seed: int | None,
        matcher: ConstraintMatcher | None = None,
        keeper: BudgetKeeper | None = None,
    ) -> None:
        self._backend = backend
        self._context: _Context | None = context
        self._matcher = matcher  # the grammar state after the accepted tokens; None: unconstrained
        self._keeper = keeper  # the budget the answer's closing needs, after the accepted tokens
        self._temperature = temperature
        self._top_p = top_p
        self._rng = np.random.default_rng(seed)
        self.prompt_ids = list(prompt_ids)
        self.response_ids: list[int] = []
        self._drafted: list[_Drafted] = []
        self._retained: _Drafted | None = None
        self._calls = 0
        context.clear()
        last = len(prompt_ids) - 1
        context.decode([(token, position, 0, position == last) for position, token in enumerate(prompt_ids)])
        self._next_logits = context.logits(-1)
        self._forward_tokens = len(prompt_ids)

    # Protocol -------------------------------------------------------------------------------------

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def llm_forward_tokens(self) -> int:
        return self._forward_tokens

    @property
    def llm_calls(self) -> int:
        return self._calls

    @property
    def token_ids(self) -> list[int]:
        """Prompt and accepted response ids, exactly as the model saw them."""
        return self.prompt_ids + self.response_ids

    capabilities = GenerationCapabilities(entropy_segments=True)  # next-token logits are at hand

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        """K candidates decoded together from the shared prefix (see the module docstring).

        With `entropy_cut` (the CARDS rule), a candidate also ends where its next-token entropy
        (nats) reaches the cut: the segment stops before the token the model is unsure about. Its
        cells and logits are kept like any other candidate's, so it commits without recomputation.
        """
        context = self._require_context()
        if not 1 <= num_candidates <= self._backend.max_candidates:
            raise ValueError(
                f"LlamaCppBackend drafts 1 to {self._backend.max_candidates} candidates per round "
                f"(got {num_candidates}); raise max_candidates"
            )
        self._calls += 1
        self._drafted = self._draft_round(context, num_candidates, max_tokens, entropy_cut)
        return [item.candidate for item in self._drafted]

    def retain(self, candidate: Candidate) -> None:
        context = self._require_context()
        for item in self._drafted:
            if item.candidate is candidate and item.logits is not None:
                retained = self._backend.retained_seq
                context.remove(retained)
                context.copy_sequence(item.sequence, retained)
                self._retained = _Drafted(candidate, retained, item.logits, item.keeper)
                return

    def commit(self, candidate: Candidate) -> None:
        context = self._require_context()
        chosen = next((item for item in self._drafted if item.candidate is candidate), None)
        if chosen is None and self._retained is not None and self._retained.candidate is candidate:
            chosen = self._retained
        if chosen is None:
            raise ValueError("commit() needs a candidate from the latest draft or the retained one")
        if chosen.logits is None:
            raise ValueError("a candidate that ended with EOS cannot be continued")
        if self._matcher is not None:
            self._matcher.advance(candidate.token_ids)
        if chosen.keeper is not None:
            self._keeper = chosen.keeper
        # Its cells (prefix + candidate) become the new prefix; every other sequence is dropped.
        prefix_end = len(self.prompt_ids) + len(self.response_ids)
        context.copy_sequence(chosen.sequence, 0, prefix_end, -1)
        for sequence in range(1, self._backend.retained_seq + 1):
            context.remove(sequence)
        self.response_ids.extend(candidate.token_ids)
        self._next_logits = chosen.logits
        self._drafted, self._retained = [], None

    def close(self) -> None:
        context, self._context = self._context, None
        self._drafted, self._retained, self._matcher, self._keeper = [], None, None, None
        if context is not None:
            self._backend._release(context)

    # Internals ------------------------------------------------------------------------------------

    def _require_context(self) -> _Context:
        if self._context is None:
            raise RuntimeError("this generation is closed")
        return self._context

    def _draft_round(self, context: _Context, count: int, max_tokens: int, entropy_cut: float | None) -> list[_Drafted]:
        backend = self._backend
        prefix_end = len(self.prompt_ids) + len(self.response_ids)
        sequences = [1 + index for index in range(count)]
        for sequence in sequences:  # fork the prefix: its cells gain the candidate's sequence id
            context.remove(sequence)
            context.copy_sequence(0, sequence, -1, -1)
        sampled: list[list[int]] = [[] for _ in range(count)]
        ended = [False] * count
        final: list[np.ndarray | None] = [None] * count
        alive = list(range(count))
        logits = np.broadcast_to(self._next_logits, (count, backend.n_vocab))
        # Under a grammar each candidate gets its own fork of the committed matcher; no mask work without one.
        matchers = fork_rows(self._matcher, count)
        masker = None if self._matcher is None else NumpyMasker(count, backend.grammars.get().vocab_size)
        # ... and of the budget keeper: the reserve that closes the answer within max_new_tokens.
        keepers = [None if self._keeper is None else self._keeper.fork() for _ in range(count)]
        stop_ids = () if self._keeper is None else backend.grammars.get().stop_ids
        for step in range(max_tokens):
            allowed = logits if masker is None else masker.apply(logits, [matchers[p] for p in alive])
            tokens = sample(allowed, self._temperature, self._top_p, self._rng)
            evaluate: list[int] = []
            for row, position in enumerate(alive):
                token = int(tokens[row])
                matcher = matchers[position]
                keeper = keepers[position]
                if keeper is not None:  # the budget meets the reserve: the closing's token instead
                    token = keeper.choose(token, matcher, stop_ids)
                if matcher is not None:
                    matcher.accept(token)
                sampled[position].append(token)
                if backend.is_end(token):
                    ended[position] = True  # an EOS is never continued: not evaluated
                else:
                    evaluate.append(position)
            if not evaluate:
                alive = []
                break
            context.decode([(sampled[p][-1], prefix_end + step, sequences[p], True) for p in evaluate])
            self._forward_tokens += len(evaluate)
            logits = np.stack([context.logits(index) for index in range(len(evaluate))])
            alive = evaluate
            if entropy_cut is not None:
                unsure = entropy(logits) >= entropy_cut
                for row in np.flatnonzero(unsure):  # these segments end here, before the uncertain token
                    final[alive[row]] = logits[row].copy()
                if unsure.any():
                    logits = logits[~unsure]
                    alive = [position for row, position in enumerate(alive) if not unsure[row]]
                    if not alive:
                        break
        for row, position in enumerate(alive):
            final[position] = logits[row].copy()
        results = []
        for position in range(count):
            candidate = self._candidate(sampled[position], ended[position])
            logits_after = None if ended[position] else final[position]
            results.append(_Drafted(candidate, sequences[position], logits_after, keepers[position]))
        return results

    def _candidate(self, ids: list[int], hit_eos: bool) -> Candidate:
        """Text and per-token end offsets from the tokens' byte pieces (UTF-8 split across tokens is fine)."""
        backend = self._backend
        text_ids = ids[:-1] if hit_eos else ids
        # A character split across segments belongs to the segment that completes it: the accepted
        # text's incomplete tail bytes lead this segment, and this segment's own are left to the next.
        data = incomplete_utf8_tail(b"".join(backend.piece(token) for token in self.response_ids[-4:]))
        ends: list[int] = []
        for token in text_ids:
            data += backend.piece(token)
            ends.append(len(complete_utf8(data).decode("utf-8", "replace")))
        text = complete_utf8(data).decode("utf-8", "replace")
        return Candidate(text, tuple(ids), "eos" if hit_eos else "length", tuple(min(e, len(text)) for e in ends))
