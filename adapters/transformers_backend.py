"""`TransformersBackend`: any Hugging Face causal LM, with token-level control.

Token ids are kept end to end and the accepted prefix's KV cache is reused: a round of K drafts
forks the prefix cache into K rows (as views: the first decoding step materialises them), the
rows advance in lockstep, and committing a candidate narrows the cache back to its row. Every
sampled token is forwarded exactly once, so `llm_forward_tokens == prompt_tokens + tokens_sampled`.

Under an `OutputConstraint` (`OpenRequest.constraint`) each row also forks the generation's grammar
matcher and its logits are masked before every token (`_grammar.py`); committing advances the
matcher by the candidate's ids, and each row's budget keeper writes the answer's closing when the
budget left meets it (`_grammar.BudgetKeeper`). Without one no matcher exists and no mask work is done.
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stars_guard.adapters._chat import chat_prompt_ids
from stars_guard.adapters._grammar import (
    BudgetKeeper,
    ConstraintGrammars,
    ConstraintMatcher,
    LazyGrammars,
    TorchMasker,
    fork_rows,
)
from stars_guard.adapters._text import candidate_from_ids, eos_ids
from stars_guard.capabilities import BackendCapabilities, GenerationCapabilities
from stars_guard.errors import ContextWindowExceededError, ModelNotFoundError
from stars_guard.messages import ChatMessage
from stars_guard.protocols import Candidate, DraftRequest, OpenRequest
from stars_guard.tools import OutputConstraint

_LOADED: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()
_NUCLEUS_SHORTLIST = 256  # top tokens searched first for the top-p nucleus


def load_causal_lm(source: str | Path, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) for a hub id, a local directory or a .gguf file; loaded once per process."""
    key = (str(source), device, dtype)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load(str(source), device, dtype)
        return _LOADED[key]


def _load(source: str, device: str, dtype: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(source).expanduser()
    kwargs: dict[str, Any] = {}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        location, kwargs["gguf_file"] = str(path.parent), path.name
    elif path.is_dir():
        location = str(path)
    elif source.startswith((".", "/", "~")) or path.suffix:
        raise ModelNotFoundError(f"model path {path} does not exist")
    else:
        location = source  # a hub id: works only where the hub (or its local cache) is reachable
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=getattr(torch, dtype), **kwargs)
    except OSError as exc:
        raise ModelNotFoundError(
            f"could not load causal LM {source!r}: {exc}. Pass a local directory or .gguf file; hub ids "
            "need the model hub or its local cache."
        ) from exc
    model.to(device)
    model.eval()
    if getattr(model, "hf_quantizer", None) is not None and kwargs.get("gguf_file"):
        model.hf_quantizer = None  # GGUF weights are dequantised on load; nothing stays quantised
    return model, tokenizer


class TransformersBackend:
    """Drafts candidate segments from a local causal LM (see the module docstring)."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        loaded: tuple[Any, Any] | None = None,
    ) -> None:
        if loaded is None:
            if model is None:
                from stars_guard.models import require_default_lm

                model = require_default_lm()
            loaded = load_causal_lm(model, device, dtype)
        self.model, self.tokenizer = loaded
        self.device = torch.device(device)
        self._model_name = _display_name(model, self.model)
        self.context_window = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self._cache_kwarg = (
            "cache" if "cache" in inspect.signature(self.model.forward).parameters else ("past_key_values")
        )
        logits_width = int(getattr(self.model.config, "vocab_size", 0) or 0) or len(self.tokenizer)
        self.grammars = LazyGrammars(
            lambda: ConstraintGrammars.for_huggingface(self.tokenizer, logits_width, sorted(self.eos_ids))
        )

    @property
    def model_name(self) -> str:
        return self._model_name

    def encode_chat(self, messages: Sequence[ChatMessage], constraint: OutputConstraint | None = None) -> list[int]:
        """Token ids of the chat-templated prompt, ready for the assistant's turn.

        Control-token text a user writes stays text: only the template makes control tokens.
        Tools go to the template where it knows them, else into the text format (`_chat.template_input`).
        """
        return chat_prompt_ids(self.tokenizer, messages, constraint=constraint)

    # Every segment is drafted under the grammar (a matcher forked per candidate, masked per token);
    # concurrent requests draft and prefill together in lockstep serving.
    capabilities = BackendCapabilities(batch_drafting=True, batch_opening=True, constraints="segments")

    def open(self, request: OpenRequest) -> TransformersGeneration:
        prompt_ids = self._prompt_ids(request)
        matcher = self.grammars.matcher(request.constraint)
        keeper = self.grammars.keeper(request.constraint, request.max_new_tokens)
        return TransformersGeneration(
            self, prompt_ids, request.temperature, request.top_p, request.seed, matcher=matcher, keeper=keeper
        )

    def _prompt_ids(self, request: OpenRequest) -> list[int]:
        """The rendered prompt, or `ContextWindowExceededError` when it and the answer cannot fit."""
        prompt_ids = self.encode_chat(request.messages, request.constraint)
        if self.context_window is not None and len(prompt_ids) + request.max_new_tokens > self.context_window:
            raise ContextWindowExceededError(len(prompt_ids), request.max_new_tokens, self.context_window)
        return prompt_ids

    def open_batch(self, requests: Sequence[OpenRequest]) -> list[TransformersGeneration | Exception]:
        """Prefill several prompts in one forward (left-padded, masked); each gets its own cache rows.

        An Exception stands in for a request that cannot be opened (e.g. over the context window).
        """
        opened: list[TransformersGeneration | Exception] = []
        prompts: list[tuple[int, list[int]]] = []
        matchers: dict[int, ConstraintMatcher | None] = {}
        keepers: dict[int, BudgetKeeper | None] = {}
        for index, request in enumerate(requests):
            try:
                prompt_ids = self._prompt_ids(request)
                matchers[index] = self.grammars.matcher(request.constraint)
                keepers[index] = self.grammars.keeper(request.constraint, request.max_new_tokens)
            except Exception as exc:
                opened.append(exc)
                continue
            opened.append(RuntimeError("prefill did not run"))  # replaced below
            prompts.append((index, prompt_ids))
        if not prompts:
            return opened
        longest = max(len(ids) for _, ids in prompts)
        pads = [longest - len(ids) for _, ids in prompts]
        input_ids = torch.tensor([[0] * pad + ids for pad, (_, ids) in zip(pads, prompts, strict=True)])
        mask = torch.cat([_pad_mask(pad, len(ids), 1) for pad, (_, ids) in zip(pads, prompts, strict=True)])
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits, cache = self.forward(input_ids, attention_mask=mask if any(pads) else None, position_ids=positions)
        for row, ((index, ids), pad) in enumerate(zip(prompts, pads, strict=True)):
            request = requests[index]
            state = (_row_of(cache, row, pad), logits[row : row + 1, -1, :].float())
            opened[index] = TransformersGeneration(
                self,
                ids,
                request.temperature,
                request.top_p,
                request.seed,
                prefilled=state,
                matcher=matchers[index],
                keeper=keepers[index],
            )
        return opened

    def draft_batch(self, requests: Sequence[DraftRequest]) -> list[list[Candidate]]:
        """Draft for several generations of this backend in one batched forward per token.

        Each generation keeps its own sampling parameters and random generator, so a request
        samples the same tokens as it would alone wherever the batched logits equal its own.
        Prefixes of different lengths are left-padded and masked for the round only; every
        generation gets back a cache of its own rows without padding. Used by lockstep serving.
        """
        return _draft_round(self, list(requests))

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Any = None,
        last_only: bool = True,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> Any:
        """One model call; returns (logits of the last position(s), cache)."""
        kwargs = {self._cache_kwarg: cache, "use_cache": True}
        if last_only:
            kwargs["logits_to_keep"] = 1
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(self.device)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids.to(self.device)
        output = self.model(input_ids=input_ids.to(self.device), **kwargs)
        new_cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        return output.logits, new_cache


@dataclass
class _Draft:
    """The latest round: its candidates and, for those that can continue, their state after them."""

    candidates: list[Candidate]
    states: dict[int, tuple[Any, torch.Tensor]]  # candidate position -> (1-row cache, next logits)
    keepers: dict[int, BudgetKeeper] = field(default_factory=dict)  # candidate position -> its budget keeper

    def keeper_of(self, candidate: Candidate) -> BudgetKeeper | None:
        """The budget keeper after `candidate` (None: unconstrained or not from this round)."""
        for position, drafted in enumerate(self.candidates):
            if drafted is candidate:
                return self.keepers.get(position)
        return None

    def state_of(self, candidate: Candidate) -> tuple[Any, torch.Tensor] | None:
        """(cache, next logits) after `candidate`; None if it is not from this round or ended with EOS."""
        for position, drafted in enumerate(self.candidates):
            if drafted is candidate:
                return self.states.get(position)
        return None


class TransformersGeneration:
    """One answer on a `TransformersBackend`: accepted ids, their KV cache, next-token logits."""

    def __init__(
        self,
        backend: TransformersBackend,
        prompt_ids: list[int],
        temperature: float,
        top_p: float,
        seed: int | None,
        prefilled: tuple[Any, torch.Tensor] | None = None,
        matcher: ConstraintMatcher | None = None,
        keeper: BudgetKeeper | None = None,
    ) -> None:
        self._backend = backend
        self._matcher = matcher  # the grammar state after the accepted tokens; None: unconstrained
        self._keeper = keeper  # the budget the answer's closing needs, after the accepted tokens
        self._temperature = temperature
        self._top_p = top_p
        self._generator = torch.Generator(device=backend.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self.prompt_ids = list(prompt_ids)
        self.response_ids: list[int] = []
        self._draft: _Draft | None = None
        self._retained: tuple[Candidate, Any, torch.Tensor] | None = None
        self._retained_keeper: BudgetKeeper | None = None
        self._calls = 0
        if prefilled is None:
            with torch.inference_mode():
                logits, self._cache = backend.forward(torch.tensor([self.prompt_ids]))
            self._next_logits = logits[:, -1, :].float()
        else:  # prefilled in a batch by `open_batch`: (1-row cache without padding, next-token logits)
            self._cache, self._next_logits = prefilled
        self._forward_tokens = len(self.prompt_ids)

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

    def next_token_logits(self) -> torch.Tensor:
        """Logits for the token after the accepted prefix (from the cache: no recomputation)."""
        return self._next_logits

    capabilities = GenerationCapabilities(entropy_segments=True)  # next-token logits are at hand

    def draft(self, num_candidates: int, max_tokens: int, entropy_cut: float | None = None) -> list[Candidate]:
        """K candidates decoded in lockstep from the shared prefix cache.

        With `entropy_cut` (the CARDS rule), a candidate also ends where its next-token entropy (nats)
        reaches the cut: the segment stops before the token the model is unsure about. Such a row
        leaves the batch with its own cache state, so it can still be committed without recomputation.
        """
        return _draft_round(self._backend, [DraftRequest(self, num_candidates, max_tokens, entropy_cut)])[0]

    def retain(self, candidate: Candidate) -> None:
        state = self._draft.state_of(candidate) if self._draft is not None else None
        if state is not None:
            self._retained = (candidate, *state)
            self._retained_keeper = self._draft.keeper_of(candidate) if self._draft is not None else None

    def commit(self, candidate: Candidate) -> None:
        state = self._draft.state_of(candidate) if self._draft is not None else None
        if state is not None:
            keeper = self._draft.keeper_of(candidate) if self._draft is not None else None
            self._advance(candidate, *state)
            self._keeper = keeper or self._keeper
        elif self._retained is not None and self._retained[0] is candidate:
            keeper = self._retained_keeper
            self._advance(*self._retained)
            self._keeper = keeper or self._keeper
        elif candidate.finish_reason == "eos":
            raise ValueError("a candidate that ended with EOS cannot be continued")
        else:
            raise ValueError("commit() needs a candidate from the latest draft or the retained one")

    def close(self) -> None:
        self._cache = self._draft = self._retained = self._matcher = self._keeper = self._retained_keeper = None

    # Internals ------------------------------------------------------------------------------------

    def _advance(self, candidate: Candidate, cache: Any, logits: torch.Tensor) -> None:
        if self._matcher is not None:
            self._matcher.advance(candidate.token_ids)
        self.response_ids.extend(candidate.token_ids)
        self._cache, self._next_logits = cache, logits
        self._draft = self._retained = self._retained_keeper = None

    def _candidate(self, ids: list[int], hit_eos: bool) -> Candidate:
        """Decode a draft as a continuation of the accepted text, with per-token end offsets."""
        return candidate_from_ids(self._backend.tokenizer, self.response_ids, ids, hit_eos)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Greedy for temperature 0, else temperature + nucleus sampling; one token per row."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        # The nucleus almost always lies in the top few hundred tokens: sorting those is exact and far
        # cheaper than sorting the whole vocabulary; fall back to the full sort when it does not.
        sorted_probs, order = probs.topk(min(_NUCLEUS_SHORTLIST, probs.shape[-1]), dim=-1)
        if not bool((sorted_probs.sum(dim=-1) >= top_p).all()):
            sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _draft_round(backend: TransformersBackend, requests: list[DraftRequest]) -> list[list[Candidate]]:
    """Decode one round for one or more generations in lockstep: one forward per token for all rows.

    Row bookkeeping: `owners[row] = (request index, candidate position)`; rows of a request stay
    contiguous as rows leave (EOS, entropy cut, budget), so each request samples its slice alone.
    A row that ends without EOS leaves with its own cache view (padding dropped) and logits.
    """
    generations = [request.generation for request in requests]
    if any(generation._cache is None for generation in generations):
        raise RuntimeError("this generation is closed")
    lengths = [len(generation.token_ids) for generation in generations]
    longest = max(lengths)
    pads = [longest - length for length in lengths]
    counts = [request.num_candidates for request in requests]
    if len(requests) == 1:
        cache = _fork_cache(generations[0]._cache, counts[0])
    else:
        cache = _join_caches([(g._cache, k, pad) for g, k, pad in zip(generations, counts, pads, strict=True)])
    logits = torch.cat([g._next_logits.expand(k, -1) for g, k in zip(generations, counts, strict=True)])
    owners = [(index, position) for index, count in enumerate(counts) for position in range(count)]
    # Under a grammar each candidate row gets its own fork of its generation's matcher; no mask work without one.
    matchers, masker = _row_matchers(backend, generations, counts)
    # Under a grammar each row also forks its generation's budget keeper: the reserve that closes the answer.
    keepers = [
        None if generation._keeper is None else generation._keeper.fork()
        for generation, count in zip(generations, counts, strict=True)
        for _ in range(count)
    ]
    stop_ids = tuple(sorted(backend.eos_ids))
    mask = positions = None
    if any(pads):
        shapes = zip(pads, lengths, counts, strict=True)
        mask = torch.cat([_pad_mask(pad, length, count) for pad, length, count in shapes])
        positions = torch.tensor([lengths[index] for index, _ in owners])
    sampled = [[[] for _ in range(count)] for count in counts]
    hit_eos = [[False] * count for count in counts]
    states: list[dict[int, tuple[Any, torch.Tensor]]] = [{} for _ in requests]
    final_keepers: list[dict[int, BudgetKeeper]] = [{} for _ in requests]
    for generation in generations:
        generation._calls += 1
    eos = backend.eos_ids
    step = 0
    with torch.inference_mode():
        while owners:
            if masker is not None:
                masker.apply(logits, matchers)
            tokens = _sample_rows(logits, owners, generations)
            for row, (index, position) in enumerate(owners):
                token = int(tokens[row])
                keeper = keepers[row]
                if keeper is not None:
                    chosen = keeper.choose(token, matchers[row], stop_ids)
                    if chosen != token:  # the budget meets the reserve: the closing's token instead
                        tokens[row] = token = chosen
                if matchers[row] is not None:
                    matchers[row].accept(token)
                sampled[index][position].append(token)
                hit_eos[index][position] = token in eos
                generations[index]._forward_tokens += 1
            # Forward every sampled token once (EOS too): its logits/cache row is the next prefix.
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(len(owners), 1)], dim=1)
            step_positions = None if positions is None else positions.view(-1, 1)
            logits, cache = backend.forward(tokens.view(-1, 1), cache, attention_mask=mask, position_ids=step_positions)
            logits = logits[:, -1, :].float()
            if positions is not None:
                positions = positions + 1
            step += 1
            cut = _entropy_cut_rows(logits, owners, requests)
            keep: list[int] = []
            for row, (index, position) in enumerate(owners):
                if hit_eos[index][position]:
                    continue  # EOS: nothing can follow, no state to keep
                row_keeper = keepers[row]
                if row_keeper is not None:
                    final_keepers[index][position] = row_keeper
                if row in cut or step >= requests[index].max_tokens:
                    states[index][position] = (_row_of(cache, row, pads[index]), logits[row : row + 1])
                    continue
                keep.append(row)
            if len(keep) < len(owners):
                if not keep:
                    break
                index_tensor = torch.tensor(keep, device=logits.device)
                cache.batch_select_indices(index_tensor)
                logits = logits[index_tensor]
                owners = [owners[row] for row in keep]
                matchers = [matchers[row] for row in keep]
                keepers = [keepers[row] for row in keep]
                if mask is not None:
                    mask, positions = mask[index_tensor.cpu()], positions[index_tensor.cpu()]
    drafted: list[list[Candidate]] = []
    for index, generation in enumerate(generations):
        candidates = [generation._candidate(ids, hit_eos[index][i]) for i, ids in enumerate(sampled[index])]
        generation._draft = _Draft(candidates, states[index], final_keepers[index])
        drafted.append(candidates)
    return drafted


def _row_matchers(
    backend: TransformersBackend, generations: list[Any], counts: list[int]
) -> tuple[list[ConstraintMatcher | None], TorchMasker | None]:
    """Per row of a round, a fork of its generation's matcher (None: unconstrained), and the masker if any."""
    if all(generation._matcher is None for generation in generations):
        return [None] * sum(counts), None
    matchers = [
        matcher
        for generation, count in zip(generations, counts, strict=True)
        for matcher in fork_rows(generation._matcher, count)
    ]
    return matchers, TorchMasker(len(matchers), backend.grammars.get().vocab_size)


def _sample_rows(logits: torch.Tensor, owners: list[tuple[int, int]], generations: list[Any]) -> torch.Tensor:
    """Sample each generation's contiguous rows with its own parameters and random generator."""
    if len(generations) == 1:
        generation = generations[0]
        return _sample(logits, generation._temperature, generation._top_p, generation._generator)
    tokens = torch.empty(len(owners), dtype=torch.long, device=logits.device)
    start = 0
    while start < len(owners):
        index = owners[start][0]
        end = start
        while end < len(owners) and owners[end][0] == index:
            end += 1
        generation = generations[index]
        tokens[start:end] = _sample(
            logits[start:end], generation._temperature, generation._top_p, generation._generator
        )
        start = end
    return tokens


def _entropy_cut_rows(logits: torch.Tensor, owners: list[tuple[int, int]], requests: list[DraftRequest]) -> set[int]:
    """Rows whose next-token entropy reaches their request's cut (the CARDS segment rule)."""
    cuts = [requests[index].entropy_cut for index, _ in owners]
    if all(cut is None for cut in cuts):
        return set()
    entropy = _entropy(logits).tolist()
    return {row for row, cut in enumerate(cuts) if cut is not None and entropy[row] >= cut}


def _pad_mask(pad: int, length: int, rows: int) -> torch.Tensor:
    """Attention mask rows for a prefix left-padded by `pad` positions."""
    return torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(length, dtype=torch.long)]).expand(rows, -1)


def _join_caches(parts: list[tuple[Any, int, int]]) -> Any:
    """One cache of all rows: each (1-row cache, rows, left pad) expanded and padded to a common length."""
    joined = copy.copy(parts[0][0])
    joined.layers = [copy.copy(layer) for layer in parts[0][0].layers]
    for layer_index, layer in enumerate(joined.layers):
        if getattr(layer, "keys", None) is None or not layer.keys.numel():
            continue
        keys, values = [], []
        for cache, rows, pad in parts:
            source = cache.layers[layer_index]
            keys.append(torch.nn.functional.pad(source.keys, (0, 0, pad, 0)).expand(rows, -1, -1, -1))
            values.append(torch.nn.functional.pad(source.values, (0, 0, pad, 0)).expand(rows, -1, -1, -1))
        layer.keys, layer.values = torch.cat(keys), torch.cat(values)
    return joined


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row's next-token distribution."""
    log_probs = torch.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def _fork_cache(cache: Any, rows: int) -> Any:
    """A K-row cache sharing the 1-row prefix as expanded views (no copy until the next step)."""
    return _map_cache(cache, lambda tensor: tensor.expand(rows, *tensor.shape[1:]))


def _row_of(cache: Any, row: int, pad: int = 0) -> Any:
    """One row of a batched cache, as views, without the row's left padding."""
    return _map_cache(cache, lambda tensor: tensor[row : row + 1, :, pad:])


def _map_cache(cache: Any, transform: Any) -> Any:
    """A shallow copy of `cache` whose key/value tensors are `transform`ed; the original is untouched."""
    mapped = copy.copy(cache)
    mapped.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in mapped.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys, layer.values = transform(layer.keys), transform(layer.values)
    return mapped


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """EOS ids of the tokenizer and of the model's generation config (which may list several)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    listed = configured if isinstance(configured, list) else [configured]
    return eos_ids(tokenizer, extra=[int(value) for value in listed if value is not None])


def _display_name(source: str | Path | None, model: Any) -> str:
    if source is None:
        return str(getattr(model.config, "_name_or_path", "") or "transformers")
    path = Path(str(source))
    return path.stem if path.suffix == ".gguf" else path.name or str(source)
