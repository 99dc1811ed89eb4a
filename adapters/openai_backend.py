"""`OpenAICompletionsBackend`: drafts from the `/v1/completions` endpoint of vLLM, SGLang or a llama.cpp server.

Two continuation modes, chosen by probing the server once:

- token ids (vLLM, SGLang): the prompt is the exact token ids of the templated prompt plus the
  accepted tokens, and `return_token_ids` gives each choice's ids back: exact token continuation,
  nothing re-tokenised;
- text (llama-cpp-python's server, whose `prompt` takes strings only): the prompt is the templated
  text plus the accepted text; the server re-tokenises it, and candidate ids and offsets come from
  tokenising the returned text locally.

K candidates come from one request with `n=K` where the server honours `n`, else from K concurrent
requests with distinct seeds. The chat template comes from a local tokenizer (`tokenizer=`, the
model directory the server runs) or, on vLLM, from the server's own `/tokenize` with `messages`.
Failures follow `stars_guard.adapters._http`: retries with backoff, then `BackendError` with the server's words.

On vLLM (its `/v1/models` says `owned_by: vllm`) an `OutputConstraint` is held by the server's
`structured_outputs`: `json` for a JSON schema, a `structural_tag` for forced tool calls. Its grammar
starts at a request's first token, so it holds only over a whole answer (its capabilities say
"whole"); other servers, and tool calls under 'auto', get "none".
"""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stars_guard.adapters import _chat, _text
from stars_guard.adapters._closing import WholeAnswerCloser
from stars_guard.adapters._grammar import CALL_END, CALL_SEPARATOR, arguments_schema, call_begin
from stars_guard.adapters._http import HTTPClient, RetryPolicy, Timeouts
from stars_guard.capabilities import BackendCapabilities, GenerationCapabilities
from stars_guard.deadline import ContextThreadPool
from stars_guard.errors import BackendError, ConfigError, ContextWindowExceededError, StarsGuardError
from stars_guard.messages import ChatMessage
from stars_guard.protocols import Candidate, OpenRequest
from stars_guard.specs import server_root
from stars_guard.tools import OutputConstraint, plain_json, plain_turns

# Whitespace a tool call's arguments may hold between tokens: any (xgrammar's default for JSON in a
# structural tag) lets a small model drift into newlines until the budget ends, inside the call.
CALL_MAX_WHITESPACE = 1


@dataclass(frozen=True)
class ServerFeatures:
    """What the probe found out about the server (once per backend)."""

    token_prompts: bool  # accepts `prompt` as a list of token ids and returns each choice's `token_ids`
    n_choices: bool  # honours `n` > 1 with distinct samples in one request


class OpenAICompletionsBackend:
    """Drafts candidate segments through an OpenAI-compatible completions server (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        tokenizer: str | Path | Any | None = None,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 8,
        token_prompts: bool | None = None,
        n_choices: bool | None = None,
        structured_outputs: bool | None = None,
        block_size: int | None = None,
    ) -> None:
        if block_size is not None and block_size < 1:
            raise ConfigError(f"block_size must be a positive number of tokens (got {block_size})")
        self.base_url = server_root(base_url)
        self.client = HTTPClient(
            self.base_url,
            error_type=BackendError,
            service="completions server",
            timeouts=timeouts,
            retry=retry,
            api_key=api_key,
        )
        self.tokenizer = _text.load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
        self._model = model
        self._max_model_len: int | None = None
        self._owned_by: str | None = None  # `/v1/models`' owner of the served model ("vllm" on vLLM)
        self._discovered = False
        self._forced_structured = structured_outputs  # None: vLLM's `structured_outputs` iff the server is vLLM
        self._forced = (token_prompts, n_choices)
        self._features: ServerFeatures | None = None
        self._lock = threading.Lock()
        self._pool = ContextThreadPool(max_workers=max(1, max_concurrency), thread_name_prefix="stars-openai")
        self._server_adds_bos = self.tokenizer is not None and _text.adds_bos(self.tokenizer)
        self._block_size = block_size  # the server's KV-cache block, given or learnt (`cache_block_size`)
        self._block_given = block_size is not None

    @property
    def model_name(self) -> str:
        return self._model or self.base_url

    @property
    def cache_block_size(self) -> int | None:
        """The server's KV-cache block size: as given, else the greatest common divisor of the
        prefix-cache hits it has reported (vLLM's `cached_tokens` count whole blocks only, so the
        divisor is the block size or a multiple of it, and either keeps segments on boundaries)."""
        return self._block_size

    def observe_cached_tokens(self, cached: int, prompt_tokens: int) -> None:
        if self._block_given or not 0 < cached <= prompt_tokens:  # a hit larger than its prompt is not a block count
            return
        with self._lock:
            self._block_size = cached if self._block_size is None else math.gcd(self._block_size, cached)

    @property
    def features(self) -> ServerFeatures | None:
        """The probe's findings (None until the first `open`)."""
        return self._features

    def open(self, request: OpenRequest) -> OpenAICompletionsGeneration:
        self._discover_model()
        prompt_ids, prompt_text = self._render(request.messages, request.constraint)
        if self._max_model_len is not None and len(prompt_ids) + request.max_new_tokens > self._max_model_len:
            raise ContextWindowExceededError(len(prompt_ids), request.max_new_tokens, self._max_model_len)
        structured = self.structured_outputs(request.constraint)
        closer = None
        if request.constraint is not None:
            closer = WholeAnswerCloser(request.constraint, self.tokenize, request.max_new_tokens, self.end_token)
        features = self._probe(prompt_ids, prompt_text)
        return OpenAICompletionsGeneration(
            self,
            features,
            prompt_ids,
            prompt_text,
            request.temperature,
            request.top_p,
            request.seed,
            structured=structured,
            closer=closer,
        )

    @property
    def end_token(self) -> int | None:
        """The end-of-sequence id that closes an answer: the local tokenizer's; None without one."""
        token = None if self.tokenizer is None else getattr(self.tokenizer, "eos_token_id", None)
        return token if isinstance(token, int) else None

    def tokenize(self, text: str) -> list[int]:
        """`text` as the served model's token ids, no special tokens: the local tokenizer, else vLLM's `/tokenize`."""
        if self.tokenizer is not None:
            return [int(token) for token in self.tokenizer.encode(text, add_special_tokens=False)]
        payload: dict[str, Any] = {"prompt": text, "add_special_tokens": False}
        if self._model:
            payload["model"] = self._model
        data = self.client.post("/tokenize", payload).data
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise BackendError(f"the completions server at {self.base_url} answered /tokenize with {str(data)[:200]}")
        return [int(token) for token in data["tokens"]]

    @property
    def takes_structured_outputs(self) -> bool:
        """Whether the server holds vLLM's `structured_outputs` (forced, else: it is vLLM).

        Other servers drop an unknown field silently, so sending it blind would claim a constraint
        that nothing enforces.
        """
        if self._forced_structured is not None:
            return self._forced_structured
        self._discover_model()
        return self._owned_by == "vllm"

    @property
    def capabilities(self) -> BackendCapabilities:
        """'whole' on vLLM for a JSON schema and forced tool calls; 'none' for 'auto' calls (free text
        around them: the engine drafts those free) and on servers without `structured_outputs`.
        Asks the server what it is on first use (`takes_structured_outputs`)."""
        return BackendCapabilities(constraints="whole" if self.takes_structured_outputs else "none")

    def structured_outputs(self, constraint: OutputConstraint | None) -> dict[str, Any] | None:
        """vLLM's `structured_outputs` that hold `constraint` over a whole answer; None without one."""
        if constraint is None:
            return None
        if self.capabilities.constraint_support(constraint) == "none":
            raise ConfigError(
                f"the completions server at {self.base_url} cannot hold this {constraint.kind} constraint "
                "(vLLM's structured_outputs hold a JSON schema or forced tool calls; not 'auto' tool calls)"
            )
        if constraint.kind == "json_schema":
            return {"json": plain_json(constraint.schema), "disable_any_whitespace": True}
        return {"structural_tag": json.dumps(tool_calls_tag(constraint), ensure_ascii=False)}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # Internals ------------------------------------------------------------------------------------

    def completion(self, payload: dict[str, Any], *, retry: bool = True) -> tuple[dict[str, Any], int]:
        """One `/v1/completions` call; returns the decoded body and the retries it took."""
        if self._model:
            payload = {"model": self._model, **payload}
        result = self.client.post("/v1/completions", payload, retry=retry)
        body = result.data
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
            raise BackendError(f"completions server at {self.base_url} returned no choices: {str(body)[:200]}")
        return body, result.retries

    def submit(self, payload: dict[str, Any]) -> Any:
        return self._pool.submit(self.completion, payload)

    def _discover_model(self) -> None:
        """Learn the served model's name and context length from `/v1/models` (once; optional)."""
        with self._lock:
            if self._discovered:
                return
            try:
                data = self.client.get("/v1/models").data
            except StarsGuardError as exc:
                if getattr(exc, "status_code", None) is None:
                    raise  # the server is unreachable: say so now
                self._discovered = True
                return  # a server without /v1/models still serves completions
            self._discovered = True
            models = data.get("data") if isinstance(data, dict) else None
            if models:
                first = models[0]
                self._model = self._model or str(first.get("id"))
                owner = first.get("owned_by")
                self._owned_by = owner if isinstance(owner, str) else None
                limit = first.get("max_model_len")
                self._max_model_len = int(limit) if isinstance(limit, int) else None

    def _render(
        self, messages: Sequence[ChatMessage], constraint: OutputConstraint | None = None
    ) -> tuple[list[int], str]:
        """Prompt token ids and text: from the local tokenizer, else from the server's `/tokenize`.

        Control-token text in message content never becomes a control token: the ids tokenise
        content as text, and the text (which the server tokenises with special parsing) has such
        strings neutralised. The server-rendered path neutralises the common control syntaxes.
        Tools go to a local template that knows them; the server's template gets them as text
        (`stars_guard.tools.plain_turns`).
        """
        if self.tokenizer is not None:
            ids = _chat.chat_prompt_ids(self.tokenizer, messages, constraint=constraint)
            text = _chat.render_chat(self.tokenizer, messages, constraint=constraint, neutralize=True)
            bos = getattr(self.tokenizer, "bos_token", None)
            return ids, _text.strip_leading_bos(text, bos, self._server_adds_bos)
        payload: dict[str, Any] = {
            "messages": _chat.neutralize_turns(_chat.as_turns(plain_turns(messages, constraint))),
            "add_generation_prompt": True,
            "add_special_tokens": False,
        }
        if self._model:
            payload["model"] = self._model
        try:
            data = self.client.post("/tokenize", payload).data
        except StarsGuardError as exc:
            raise BackendError(
                f"{exc}. The completions server cannot render the chat template (no vLLM-style /tokenize): "
                "pass tokenizer=<the model directory the server runs> (spec: openai:URL?tokenizer=PATH)"
            ) from exc
        if isinstance(data, dict) and isinstance(data.get("max_model_len"), int):
            self._max_model_len = data["max_model_len"]
        return [int(token) for token in data["tokens"]], ""

    def _probe(self, prompt_ids: list[int], prompt_text: str) -> ServerFeatures:
        """Ask the server once what it accepts: token-id prompts with ids back, and `n` choices."""
        with self._lock:
            if self._features is not None:
                return self._features
            forced_tokens, forced_n = self._forced
            token_prompts = forced_tokens
            if token_prompts is None:
                token_prompts = self._accepts_token_prompts(prompt_ids)
            if not token_prompts and self.tokenizer is None:
                raise BackendError(
                    f"the completions server at {self.base_url} takes text prompts only, which needs a local "
                    "tokenizer: pass tokenizer=<the model directory the server runs> (spec: openai:URL?tokenizer=PATH)"
                )
            n_choices = forced_n
            if n_choices is None:
                prompt: Any = prompt_ids if token_prompts else prompt_text
                n_choices = self._honours_n(prompt)
            self._features = ServerFeatures(bool(token_prompts), bool(n_choices))
            return self._features

    def _accepts_token_prompts(self, prompt_ids: list[int]) -> bool:
        # Any HTTP answer other than success means "no": llama-cpp-python answers a list of ids with a
        # 500 carrying a validation error, vLLM and SGLang accept it. Only an unreachable server raises.
        try:
            body, _ = self.completion(
                {"prompt": prompt_ids, "max_tokens": 1, "temperature": 1.0, "seed": 0, "return_token_ids": True},
                retry=False,
            )
        except StarsGuardError as exc:
            if getattr(exc, "status_code", None) is not None:
                return False
            raise
        return isinstance(body["choices"][0].get("token_ids"), list)

    def _honours_n(self, prompt: Any) -> bool:
        try:
            body, _ = self.completion({"prompt": prompt, "max_tokens": 1, "temperature": 1.0, "seed": 0, "n": 2})
        except StarsGuardError as exc:
            status = getattr(exc, "status_code", None)
            if status is not None and 400 <= status < 500 and status != 429:
                return False  # a server that validates `n` strictly
            raise
        return len(body["choices"]) == 2  # llama-cpp-python ignores `n` and answers once


class OpenAICompletionsGeneration(_text.StatelessGeneration):
    """One answer on an `OpenAICompletionsBackend`: the accepted ids (or text) sent back as the next prompt."""

    def __init__(
        self,
        backend: OpenAICompletionsBackend,
        features: ServerFeatures,
        prompt_ids: list[int],
        prompt_text: str,
        temperature: float,
        top_p: float,
        seed: int | None,
        *,
        structured: Mapping[str, Any] | None = None,
        closer: WholeAnswerCloser | None = None,
    ) -> None:
        super().__init__()
        self._backend = backend
        self._features = features
        self._structured = None if structured is None else dict(structured)  # held from each request's first token
        self._closer = closer  # closes an answer the budget cut (the server's grammar does not know the budget)
        self.prompt_ids = prompt_ids
        self._prompt_text = prompt_text
        self._temperature = temperature
        self._top_p = top_p
        self._rng = random.Random(seed)
        self.response_ids: list[int] = []
        self.response_text = ""
        self._computed: int | None = 0  # stays an int only while every response reports cached tokens
        tokenizer = backend.tokenizer
        self._eos_id = None if tokenizer is None else getattr(tokenizer, "eos_token_id", None)
        # Token-id prompts are the ones a block cache matches exactly (`segment_size="auto"`).
        self.capabilities = GenerationCapabilities(reports_retries=True, cache_blocks=features.token_prompts)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def llm_forward_tokens(self) -> int | None:
        """Known only where the server reports its prefix-cache hits (vLLM's `cached_tokens`)."""
        return self._computed

    def cache_alignment(self) -> tuple[int, int] | None:
        """(the server's block size, tokens of the next round's prompt); None until the block is known."""
        block = self._backend.cache_block_size
        if block is None or not self._features.token_prompts:
            return None
        return block, len(self.prompt_ids) + len(self.response_ids)

    def _draft_round(self, num_candidates: int, max_tokens: int) -> tuple[list[Candidate], int]:
        if self._structured is not None and (self.response_ids or self.response_text):
            raise RuntimeError(
                "a constrained completions generation drafts whole answers only: the server's grammar "
                "starts at each request's first token, so it cannot continue a committed segment"
            )
        base: dict[str, Any] = {"prompt": self._prompt(), "max_tokens": max_tokens, **self._sampling()}
        if self._features.token_prompts:
            base["return_token_ids"] = True
        if self._structured is not None:
            base["structured_outputs"] = self._structured
        if self._features.n_choices or num_candidates == 1:
            body, retries = self._backend.completion({**base, "n": num_candidates, "seed": self._seed()})
            bodies = [body]
            choices = sorted(body["choices"], key=lambda choice: choice.get("index", 0))
        else:
            futures = [self._backend.submit({**base, "seed": self._seed()}) for _ in range(num_candidates)]
            answers = [future.result() for future in futures]
            bodies = [body for body, _ in answers]
            retries = sum(count for _, count in answers)
            choices = [body["choices"][0] for body in bodies]
        if len(choices) != num_candidates:
            raise BackendError(f"completions server returned {len(choices)} choices for n={num_candidates}")
        self._count_computed(bodies)
        candidates = [self._candidate(choice) for choice in choices]
        if self._closer is not None:
            accepted = len(self.response_ids)
            candidates = [self._closer.close(candidate, max_tokens, accepted) for candidate in candidates]
        return candidates, retries

    def _accept(self, candidate: Candidate) -> None:
        self.response_ids.extend(candidate.token_ids)
        self.response_text += candidate.text

    # Internals ------------------------------------------------------------------------------------

    def _prompt(self) -> list[int] | str:
        if self._features.token_prompts:
            return self.prompt_ids + self.response_ids
        # The server re-tokenises text with special parsing on: accepted text must not make control tokens.
        return self._prompt_text + _chat.neutralize_text(self.response_text, self._backend.tokenizer)

    def _sampling(self) -> dict[str, Any]:
        if self._temperature == 0.0:
            return {"temperature": 0.0}
        return {"temperature": self._temperature, "top_p": self._top_p}

    def _seed(self) -> int:
        return self._rng.randrange(2**31 - 1)

    def _candidate(self, choice: dict[str, Any]) -> Candidate:
        text = str(choice.get("text") or "")
        # No stop strings are sent, so "stop" can only mean the model's end of sequence.
        hit_eos = choice.get("finish_reason") == "stop"
        tokenizer = self._backend.tokenizer
        ids = choice.get("token_ids")
        if self._features.token_prompts and isinstance(ids, list):
            ids = [int(token) for token in ids]
            if tokenizer is None:
                return Candidate(text, tuple(ids), "eos" if hit_eos else "length")
            decoded = _text.candidate_from_ids(tokenizer, self.prompt_ids + self.response_ids, ids, hit_eos)
            ends = decoded.token_ends if decoded.text == text else ()
            return Candidate(text, tuple(ids), decoded.finish_reason, ends)
        return _text.candidate_from_text(tokenizer, text, hit_eos, self._eos_id)

    def _count_computed(self, bodies: list[dict[str, Any]]) -> None:
        for body in bodies:
            usage = body.get("usage") or {}
            details = usage.get("prompt_tokens_details") or {}
            cached = details.get("cached_tokens") if isinstance(details, dict) else None
            if not isinstance(cached, int) or not isinstance(usage.get("prompt_tokens"), int):
                self._computed = None
                continue
            self._backend.observe_cached_tokens(cached, usage["prompt_tokens"])
            if self._computed is not None:
                self._computed += usage["prompt_tokens"] - cached + int(usage.get("completion_tokens") or 0)


def tool_calls_tag(constraint: OutputConstraint) -> dict[str, Any]:
    """vLLM's structural tag for forced tool calls: only call blocks, one unless parallel, then EOS.

    The layout of `_grammar.tool_calls_structural_tag` (the text `stars_guard.tools` parses), with
    each call's arguments as `json_schema` content, which the server's xgrammar compiles: no local
    xgrammar needed.
    """
    tags = [
        {
            "type": "tag",
            "begin": call_begin(tool.name),
            "content": {
                "type": "json_schema",
                "json_schema": arguments_schema(tool),
                "max_whitespace_cnt": CALL_MAX_WHITESPACE,
            },
            "end": CALL_END,
        }
        for tool in constraint.tools
    ]
    layout = {
        "type": "tags_with_separator",
        "tags": tags,
        "separator": CALL_SEPARATOR,
        "at_least_one": True,
        "stop_after_first": not constraint.parallel_tool_calls,
    }
    return {"type": "structural_tag", "format": layout}
