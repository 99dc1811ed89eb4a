"""`LlamaServerBackend`: drafts from llama.cpp's own `llama-server`, with exact token continuation.

llama-server's native `/completion` takes the prompt as token ids and returns the sampled ids
(`return_tokens`), so every round continues exactly the accepted tokens, like the in-process
backends; nothing is re-tokenised. K candidates come from one request (`n_cmpl`, split over several
requests when K exceeds the server's slots), and `cache_prompt` lets each slot reuse the KV cache
of the prefix it already holds. Per-token text pieces come back with `n_probs: 1`, so the engine can
cut a candidate at a stop string and count its tokens exactly. `llm_forward_tokens` is the server's
own count: the prompt tokens a request evaluated after its cache hit (`timings.prompt_n`, once per
request: with `n_cmpl` the other slots copy the first one's KV cache) plus the tokens sampled.

Slot pinning (no recompute of the accepted prefix): each result names the slot that produced it
(`id_slot`). With `n_cmpl` the request's own slot (result `index` 0, the parent) evaluates the
prompt; the child slots copy its KV cache (`llama_memory_seq_cp`, metadata only when the server
runs with `--kv-unified`) and drop their context when they finish. So after a round only each
parent slot still holds the prompt plus its own candidate. A generation remembers those slots and
sends every request of its next round to one of them (`id_slot`): the one whose candidate was
accepted when a parent's candidate won (a full cache hit), else the round's first parent (a hit of
everything but the accepted segment, whose KV died with its child slot). Several requests of one
round go to the same slot, one after the other (each takes all the slots anyway). The pin only
saves work: a slot another generation used meanwhile is a cache miss, never a wrong answer. A
server that refuses `id_slot` (an older build) is asked again without it, and the backend stops
pinning from then on.

The chat template is the server's (`/apply-template`). Message content is tokenised with special
parsing off wherever it looks like a control token, so it can never forge a turn. The server's
properties (`/props`: slots, context per slot, model, build) are read once.

Under an `OutputConstraint` the server's own grammar sampling holds it. Its grammar starts at a
request's first token, so it holds only over a whole answer (its capabilities say "whole"):
a JSON schema goes as `json_schema`, a forced tool call as a GBNF `grammar` around the call's JSON.
That JSON's grammar is the server's own conversion of the call's schema (the rules it would run for
`json_schema`, echoed in `generation_settings.grammar`), asked once per constraint: llama.cpp's
GBNF parser rejects xgrammar's EBNF (`_` in rule names, `(= ...)` lookaheads, `{0, -1}`, `\0`).
"""

from __future__ import annotations

import codecs
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from stars_guard.adapters import _chat, _text
from stars_guard.adapters._closing import WholeAnswerCloser
from stars_guard.adapters._grammar import CALL_SEPARATOR, arguments_schema, constraint_key
from stars_guard.adapters._http import HTTPClient, RetryPolicy, Timeouts
from stars_guard.capabilities import BackendCapabilities
from stars_guard.deadline import ContextThreadPool
from stars_guard.errors import BackendError, ConfigError, ContextWindowExceededError
from stars_guard.messages import ChatMessage
from stars_guard.protocols import Candidate, OpenRequest
from stars_guard.tools import CALL_PREFIX, CALL_SUFFIX, OutputConstraint, plain_json, plain_turns

GRAMMAR_CACHE_SIZE = 32  # tool-call grammars kept per backend: a service sees few distinct tool sets


@dataclass(frozen=True)
class ServerProps:
    """What `/props` says about the server (read once per backend)."""

    slots: int  # parallel sequences (`-np`): the most candidates one request can sample
    context: int  # tokens per slot: prompt plus answer must fit
    model: str
    build: str
    eos_token: str = ""  # the end-of-sequence token's text (`/props`' eos_token)


class LlamaServerBackend:
    """Drafts candidate segments through llama.cpp's `llama-server` (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = HTTPClient(
            self.base_url,
            error_type=BackendError,
            service="llama-server",
            timeouts=timeouts,
            retry=retry,
            api_key=api_key,
        )
        self._props: ServerProps | None = None
        self._end_token: int | None = None
        self._lock = threading.Lock()
        self._grammars: OrderedDict[str, str] = OrderedDict()  # constraint_key -> GBNF of its tool calls
        self._pool = ContextThreadPool(max_workers=max(1, max_concurrency), thread_name_prefix="stars-llama-server")
        self.pins_slots = True  # sends `id_slot`; False once the server refused it (an older build)

    @property
    def props(self) -> ServerProps:
        """The server's slots, context, model and build, from `/props` (asked once)."""
        with self._lock:
            if self._props is None:
                data = self.client.get("/props").data
                if not isinstance(data, dict):
                    raise BackendError(f"llama-server at {self.base_url} answered /props with {str(data)[:200]}")
                settings = data.get("default_generation_settings") or {}
                self._props = ServerProps(
                    slots=max(1, int(data.get("total_slots") or 1)),
                    context=int(settings.get("n_ctx") or 0),
                    model=PurePath(str(data.get("model_alias") or data.get("model_path") or "llama-server")).stem,
                    build=str(data.get("build_info") or ""),
                    eos_token=str(data.get("eos_token") or ""),
                )
            return self._props

    @property
    def model_name(self) -> str:
        return self.props.model

    def open(self, request: OpenRequest) -> LlamaServerGeneration:
        prompt_ids = self.prompt_ids(request.messages, request.constraint)
        context = self.props.context
        if context and len(prompt_ids) + request.max_new_tokens > context:
            raise ContextWindowExceededError(len(prompt_ids), request.max_new_tokens, context)
        structured = self.structured_params(request.constraint)
        closer = None
        if request.constraint is not None:
            closer = WholeAnswerCloser(
                request.constraint,
                lambda text: self.tokenize(text, parse_special=False),
                request.max_new_tokens,
                self.end_token,
            )
        return LlamaServerGeneration(
            self, prompt_ids, request.temperature, request.top_p, request.seed, structured=structured, closer=closer
        )

    @property
    def end_token(self) -> int | None:
        """The id of the server's end-of-sequence token (from `/props`), asked once; None if it does not say."""
        if self._end_token is None and self.props.eos_token:
            ids = self.tokenize(self.props.eos_token, parse_special=True)
            self._end_token = ids[0] if len(ids) == 1 else -1
        return None if self._end_token in (None, -1) else self._end_token

    # 'whole' for a JSON schema and forced tool calls; 'none' for 'auto' calls (free text around them,
    # which a grammar from the first token cannot leave open: the engine drafts those free).
    capabilities = BackendCapabilities(constraints="whole")

    def structured_params(self, constraint: OutputConstraint | None) -> dict[str, Any]:
        """The `/completion` fields that make the server hold `constraint` over a whole answer."""
        if constraint is None:
            return {}
        if self.capabilities.constraint_support(constraint) == "none":
            raise ConfigError(
                "llama-server cannot hold tool calls under tool_choice='auto' (free text around the calls): "
                "draft without the constraint and read the calls from the answer"
            )
        if constraint.kind == "json_schema":
            return {"json_schema": plain_json(constraint.schema)}
        return {"grammar": self.tool_calls_grammar(constraint)}

    def tool_calls_grammar(self, constraint: OutputConstraint) -> str:
        """GBNF of an answer made only of `<tool_call>` blocks (one unless parallel), each a valid call."""
        key = constraint_key(constraint)
        with self._lock:
            if key in self._grammars:
                self._grammars.move_to_end(key)
                return self._grammars[key]
        calls = [_call_schema(tool.name, arguments_schema(tool)) for tool in constraint.tools]
        call_json = self.schema_grammar(calls[0] if len(calls) == 1 else {"anyOf": calls})
        grammar = _calls_grammar(call_json, constraint.parallel_tool_calls)
        with self._lock:
            self._grammars[key] = grammar
            while len(self._grammars) > GRAMMAR_CACHE_SIZE:
                self._grammars.popitem(last=False)
        return grammar

    def schema_grammar(self, schema: Mapping[str, Any]) -> str:
        """The server's own GBNF for `schema`: what it runs for `json_schema`, read back from an empty request."""
        payload = {"prompt": "", "n_predict": 0, "json_schema": plain_json(schema), "cache_prompt": False}
        try:
            data = self.client.post("/completion", payload).data
        except BackendError as exc:
            status = getattr(exc, "status_code", None)
            if status is not None and 400 <= status < 500:
                raise ConfigError(f"llama-server cannot draft under this tool-call constraint: {exc}") from exc
            raise
        settings = data.get("generation_settings") if isinstance(data, dict) else None
        grammar = settings.get("grammar") if isinstance(settings, dict) else None
        if not isinstance(grammar, str) or "root" not in _rule_names(grammar):
            raise BackendError(
                f"llama-server at {self.base_url} did not report the grammar of a JSON schema "
                f"(generation_settings.grammar): {str(data)[:200]}"
            )
        return grammar

    def prompt_ids(self, messages: Sequence[ChatMessage], constraint: OutputConstraint | None = None) -> list[int]:
        """Token ids of the server-templated prompt; content that looks like a control token stays text.

        Tools and tool turns are written in the text format (`stars_guard.tools.plain_turns`): the
        server's template renders tools only with `--jinja`, and its call format is not known here.
        """
        turns = _chat.as_turns(plain_turns(messages, constraint))
        if not any(_chat.looks_like_control_token(str(turn.get("content", ""))) for turn in turns):
            return self.tokenize(self.apply_template(turns), parse_special=True)
        layout = _chat.layout_chat(self.apply_template, turns)
        if layout is None:  # a template that rewrites content: break the markers instead
            return self.tokenize(self.apply_template(_chat.neutralize_turns(turns)), parse_special=True)
        ids: list[int] = []
        cursor = 0
        for start, end in [*layout.spans, (len(layout.text), len(layout.text))]:
            ids += self.tokenize(layout.text[cursor:start], parse_special=True)  # the template's own text
            ids += self.tokenize(layout.text[start:end], parse_special=False)  # message content: text only
            cursor = end
        return ids

    def apply_template(self, turns: list[dict[str, Any]]) -> str:
        data = self.client.post("/apply-template", {"messages": turns}).data
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise BackendError(f"llama-server at {self.base_url} answered /apply-template with {str(data)[:200]}")
        return data["prompt"]

    def tokenize(self, text: str, *, parse_special: bool) -> list[int]:
        if not text:
            return []
        payload = {"content": text, "add_special": False, "parse_special": parse_special}
        data = self.client.post("/tokenize", payload).data
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise BackendError(f"llama-server at {self.base_url} answered /tokenize with {str(data)[:200]}")
        return [int(token) for token in data["tokens"]]

    def complete(self, payload: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        """One `/completion` call: its results (one per candidate) and the retries it took.

        A request pinned to a slot (`id_slot`) that the server refuses (HTTP 4xx) is sent again
        unpinned; when that one succeeds, the server is taken not to know `id_slot` and no later
        request is pinned. A request that fails unpinned too raises that failure.
        """
        if "id_slot" in payload and not self.pins_slots:
            payload = {key: value for key, value in payload.items() if key != "id_slot"}
        try:
            result = self.client.post("/completion", payload)
        except BackendError as exc:
            status = getattr(exc, "status_code", None)
            if "id_slot" not in payload or status is None or not 400 <= status < 500:
                raise
            result = self.client.post("/completion", {key: value for key, value in payload.items() if key != "id_slot"})
            self.pins_slots = False
        data = result.data
        results = data if isinstance(data, list) else [data]
        if not all(isinstance(item, dict) and isinstance(item.get("tokens"), list) for item in results):
            raise BackendError(f"llama-server at {self.base_url} returned no tokens: {str(data)[:200]}")
        return sorted(results, key=lambda item: int(item.get("index", 0))), result.retries

    def submit(self, payload: dict[str, Any]) -> Any:
        return self._pool.submit(self.complete, payload)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


class LlamaServerGeneration(_text.StatelessGeneration):
    """One answer on a `LlamaServerBackend`: the accepted token ids are the next round's prompt."""

    def __init__(
        self,
        backend: LlamaServerBackend,
        prompt_ids: list[int],
        temperature: float,
        top_p: float,
        seed: int | None,
        *,
        structured: Mapping[str, Any] | None = None,
        closer: WholeAnswerCloser | None = None,
    ) -> None:
        super().__init__()
        self._backend = backend
        self._structured = dict(structured or {})  # `json_schema` or `grammar`: held from each request's first token
        self._closer = closer  # closes an answer the budget cut (the server's grammar does not know the budget)
        self.prompt_ids = prompt_ids
        self.response_ids: list[int] = []
        self._temperature = temperature
        self._top_p = top_p
        self._rng = random.Random(seed)
        self._computed = 0
        self.slot: int | None = None  # where this generation's next round goes: the slot holding the most of it
        self._held: dict[int, tuple[int, ...]] = {}  # parent slot -> the candidate it holds after the prompt
        self.prompt_evaluated: list[int] = []  # per round: prompt tokens the server evaluated (after its cache)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def llm_forward_tokens(self) -> int:
        """The server's own count: prompt tokens evaluated after each slot's cache hit, plus tokens sampled."""
        return self._computed

    def _draft_round(self, num_candidates: int, max_tokens: int) -> tuple[list[Candidate], int]:
        if self._structured and self.response_ids:
            raise RuntimeError(
                "a constrained llama-server generation drafts whole answers only: the server's grammar "
                "starts at each request's first token, so it cannot continue a committed segment"
            )
        slots = self._backend.props.slots
        sizes = [min(slots, num_candidates - start) for start in range(0, num_candidates, slots)]
        payloads = [self._payload(size, max_tokens) for size in sizes]
        if len(payloads) == 1 or "id_slot" in payloads[0]:
            # Pinned requests share one slot: sent in turn, each finds the prompt the previous one left.
            outcomes = [self._backend.complete(payload) for payload in payloads]
        else:
            outcomes = [future.result() for future in [self._backend.submit(payload) for payload in payloads]]
        results = [item for items, _ in outcomes for item in items]
        if len(results) != num_candidates:
            raise BackendError(f"llama-server returned {len(results)} completions for {num_candidates} candidates")
        for items, _ in outcomes:
            self._computed += _forward_tokens(items)
        self.prompt_evaluated.append(sum(_prompt_evaluated(items) for items, _ in outcomes))
        self._remember_slots(outcomes)
        candidates = [_candidate(item) for item in results]
        if self._closer is not None:
            accepted = len(self.response_ids)
            candidates = [self._closer.close(candidate, max_tokens, accepted) for candidate in candidates]
        return candidates, sum(retries for _, retries in outcomes)

    def _remember_slots(self, outcomes: list[tuple[list[dict[str, Any]], int]]) -> None:
        """Which slot of this round holds what: each request's parent (index 0) keeps prompt and its candidate."""
        parents = [items[0] for items, _ in outcomes if items and int(items[0].get("index", 0)) == 0]
        slots = [(item.get("id_slot"), item) for item in parents]
        slots = [(int(slot), item) for slot, item in slots if isinstance(slot, int) and slot >= 0]
        for slot, item in slots:
            self._held[slot] = tuple(int(token) for token in item["tokens"])
        if slots and self.slot not in self._held:
            self.slot = slots[0][0]

    def _accept(self, candidate: Candidate) -> None:
        self.response_ids.extend(candidate.token_ids)
        accepted = tuple(candidate.token_ids)
        winner = next(
            (slot for slot, held in self._held.items() if accepted and held[: len(accepted)] == accepted), None
        )
        if winner is not None:  # a parent's candidate won: its slot holds all of the new prompt
            self.slot = winner
        self._held = {}

    def _payload(self, count: int, max_tokens: int) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "prompt": self.prompt_ids + self.response_ids,
            "n_predict": max_tokens,
            "return_tokens": True,
            "cache_prompt": True,
            "n_probs": 1,  # per-token pieces: exact offsets for stop strings
            "seed": self._rng.randrange(2**31 - 1),
            # Plain temperature / top-p sampling, as on the other backends (the server's defaults add
            # top-k 40 and min-p 0.05).
            "top_k": 0,
            "min_p": 0.0,
            "temperature": self._temperature,
            "top_p": self._top_p if self._temperature > 0 else 1.0,
        }
        if count > 1:
            payload["n_cmpl"] = count
        if self.slot is not None and self._backend.pins_slots:
            payload["id_slot"] = self.slot
        payload.update(self._structured)
        return payload


def _call_schema(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of one call of tool `name`: `{"name": name, "arguments": ...}`, in that order."""
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


_GBNF_WORD = re.compile(r"[A-Za-z0-9-]+")  # a rule name in llama.cpp's GBNF
_GBNF_DEFINITION = re.compile(r"^\s*([A-Za-z0-9-]+)\s*::=", re.MULTILINE)


def _rule_names(grammar: str) -> set[str]:
    return set(_GBNF_DEFINITION.findall(grammar))


def _fresh_name(base: str, taken: set[str]) -> str:
    name, number = base, 0
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    return name


def _rename_rule(grammar: str, old: str, new: str) -> str:
    """`grammar` with every use of rule `old` (definition and references) named `new`.

    Walks the GBNF tokens so that names inside string literals, character classes, repetition
    counts and comments are left alone.
    """
    out: list[str] = []
    position, end = 0, len(grammar)
    while position < end:
        char = grammar[position]
        if char in '"[':
            close = '"' if char == '"' else "]"
            cursor = position + 1
            while cursor < end and grammar[cursor] != close:
                cursor += 2 if grammar[cursor] == "\\" else 1
            out.append(grammar[position : cursor + 1])
            position = cursor + 1
        elif char == "{":  # a repetition count such as {0,20}
            close = grammar.find("}", position)
            stop = end if close < 0 else close + 1
            out.append(grammar[position:stop])
            position = stop
        elif char == "#":  # a comment, to the end of its line
            newline = grammar.find("\n", position)
            stop = end if newline < 0 else newline
            out.append(grammar[position:stop])
            position = stop
        elif (word := _GBNF_WORD.match(grammar, position)) is not None:
            out.append(new if word.group() == old else word.group())
            position = word.end()
        else:
            out.append(char)
            position += 1
    return "".join(out)


def _gbnf_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _calls_grammar(call_json: str, parallel: bool) -> str:
    """GBNF of an answer made only of call blocks around `call_json` (a grammar whose root is one call).

    The blocks are the text `stars_guard.tools` parses (`CALL_PREFIX`, the JSON, `CALL_SUFFIX`),
    separated by `CALL_SEPARATOR` when calls are parallel; after the last one only EOS may follow.
    """
    taken = _rule_names(call_json)
    call = _fresh_name("tool-call-json", taken)
    block = _fresh_name("tool-call-block", taken | {call})
    rules = _rename_rule(call_json, "root", call).rstrip("\n")
    more = f" ({_gbnf_literal(CALL_SEPARATOR)} {block})*" if parallel else ""
    return (
        f"{rules}\n{block} ::= {_gbnf_literal(CALL_PREFIX)} {call} {_gbnf_literal(CALL_SUFFIX)}\n"
        f"root ::= {block}{more}\n"
    )


def _forward_tokens(items: list[dict[str, Any]]) -> int:
    """Token positions one `/completion` call computed: its prompt once, plus every token sampled.

    With `n_cmpl` the first slot evaluates the prompt and the others copy its KV cache, and each
    result repeats that slot's `prompt_n`: counting it per result would count the prompt K times.
    """
    return _prompt_evaluated(items) + sum(_timing(item, "predicted_n") for item in items)


def _prompt_evaluated(items: list[dict[str, Any]]) -> int:
    """Prompt tokens one `/completion` call evaluated after its slot's cache hit (once for all its results)."""
    return max((_timing(item, "prompt_n") for item in items), default=0)


def _timing(item: dict[str, Any], key: str) -> int:
    return int((item.get("timings") or {}).get(key) or 0)


def _candidate(item: dict[str, Any]) -> Candidate:
    """A candidate from one `/completion` result: its ids, its text, and each token's end offset."""
    ids = tuple(int(token) for token in item["tokens"])
    hit_eos = item.get("stop_type") == "eos"
    pieces = item.get("completion_probabilities") or []
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text, ends = "", []
    for piece in pieces[: len(ids) - (1 if hit_eos else 0)]:
        text += decoder.decode(bytes(piece.get("bytes") or []))
        ends.append(len(text))
    text += decoder.decode(b"", final=True)
    content = str(item.get("content") or "")
    if text != content:  # pieces missing or not matching: the text is the server's, offsets unknown
        return Candidate(content, ids, "eos" if hit_eos else "length")
    return Candidate(content, ids, "eos" if hit_eos else "length", tuple(min(end, len(content)) for end in ends))
