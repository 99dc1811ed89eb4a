"""`TGIBackend`: drafts from Hugging Face text-generation-inference's `/generate`, spoken over httpx.

TGI's Python client (`text-generation`) pins `huggingface-hub<1.0`, which transformers 5 excludes,
so this adapter speaks the HTTP API directly (schema: router/src/lib.rs of
huggingface/text-generation-inference). What TGI imposes, and how it is handled:

- `inputs` is text only: continuation is by text (templated prompt + accepted text), and the
  segment boundary comes from the per-token texts TGI returns with `details=true`;
- `/generate` tokenises with special tokens added: a templated prompt that starts with BOS would
  get a second one, so the leading BOS text is dropped when the tokenizer adds BOS itself;
- `/generate` also parses control-token text anywhere in `inputs`: such text in message content
  is broken with a U+200B before rendering, so a user cannot forge a turn;
- `temperature` must be > 0 and `top_p` < 1: temperature 0 maps to greedy (`do_sample=false`),
  `top_p=1` is simply not sent;
- no `n`: K candidates are K concurrent requests with distinct seeds.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stars_guard.adapters import _chat, _text
from stars_guard.adapters._http import HTTPClient, RetryPolicy, Timeouts
from stars_guard.deadline import ContextThreadPool
from stars_guard.errors import BackendError, ContextWindowExceededError, StarsGuardError
from stars_guard.messages import ChatMessage
from stars_guard.protocols import Candidate, OpenRequest
from stars_guard.tools import OutputConstraint, plain_turns


class TGIBackend:
    """Drafts candidate segments through a TGI server (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        tokenizer: str | Path | Any | None = None,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = HTTPClient(
            self.base_url, error_type=BackendError, service="TGI", timeouts=timeouts, retry=retry, api_key=api_key
        )
        self.tokenizer = _text.load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
        self._info: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._pool = ContextThreadPool(max_workers=max(1, max_concurrency), thread_name_prefix="stars-tgi")

    @property
    def model_name(self) -> str:
        info = self._info or {}
        return str(info.get("model_id") or self.base_url)

    def open(self, request: OpenRequest) -> TGIGeneration:
        info = self._load_info()
        prompt_text, prompt_tokens = self._render(request.messages, request.constraint)
        limit = info.get("max_total_tokens")
        if isinstance(limit, int) and prompt_tokens + request.max_new_tokens > limit:
            raise ContextWindowExceededError(prompt_tokens, request.max_new_tokens, limit)
        return TGIGeneration(self, prompt_text, prompt_tokens, request.temperature, request.top_p, request.seed)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # Internals ------------------------------------------------------------------------------------

    def generate(self, inputs: str, parameters: dict[str, Any]) -> tuple[dict[str, Any], int]:
        result = self.client.post("/generate", {"inputs": inputs, "parameters": parameters})
        body = result.data
        if isinstance(body, list) and body:  # some TGI versions wrap a single answer in a list
            body = body[0]
        if not isinstance(body, dict) or not isinstance(body.get("details"), dict):
            raise BackendError(f"TGI at {self.base_url} returned no generation details: {str(body)[:200]}")
        return body, result.retries

    def submit(self, inputs: str, parameters: dict[str, Any]) -> Any:
        return self._pool.submit(self.generate, inputs, parameters)

    def _load_info(self) -> dict[str, Any]:
        with self._lock:
            if self._info is None:
                data = self.client.get("/info").data
                self._info = data if isinstance(data, dict) else {}
            return self._info

    def _render(self, messages: Sequence[ChatMessage], constraint: OutputConstraint | None = None) -> tuple[str, int]:
        """Templated prompt text, as TGI should receive it, and its token count.

        TGI tokenises `inputs` with special-token parsing on, so control-token text in message
        content is neutralised first (exactly with a local tokenizer, else the common syntaxes).
        Tools go to a local template that knows them; TGI's own template gets them as text.
        """
        if self.tokenizer is not None:
            text = _chat.render_chat(self.tokenizer, messages, constraint=constraint, neutralize=True)
            count = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            bos = getattr(self.tokenizer, "bos_token", None)
            return _text.strip_leading_bos(text, bos, _text.adds_bos(self.tokenizer)), count
        # No local tokenizer: TGI renders the template itself (/chat_tokenize, TGI >= 2.1) and shows
        # how it tokenises the result, special tokens added, as /generate will.
        try:
            data = self.client.post(
                "/chat_tokenize",
                {"model": "tgi", "messages": _chat.neutralize_turns(_chat.as_turns(plain_turns(messages, constraint)))},
            ).data
        except StarsGuardError as exc:
            raise BackendError(
                f"{exc}. Pass tokenizer=<the model directory TGI runs> (spec: tgi:URL?tokenizer=PATH)"
            ) from exc
        return without_double_bos(str(data["templated_text"]), data["tokenize_response"])


def without_double_bos(text: str, tokens: list[dict[str, Any]]) -> tuple[str, int]:
    """Templated text TGI can take as is, and its token count.

    A token TGI adds covers no characters (offsets 0..0). When the one it adds is also the
    template's first token, the input would start with it twice: drop the template's copy.
    """
    if (
        len(tokens) >= 2
        and tokens[0].get("start") == tokens[0].get("stop") == 0
        and tokens[1].get("id") == tokens[0].get("id")
        and tokens[1].get("start") == 0
    ):
        return text[int(tokens[1]["stop"]) :], len(tokens) - 1
    return text, len(tokens)


class TGIGeneration(_text.StatelessGeneration):
    """One answer on a `TGIBackend`: the accepted text is appended to the prompt text."""

    def __init__(
        self,
        backend: TGIBackend,
        prompt_text: str,
        prompt_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> None:
        super().__init__()
        self._backend = backend
        self._prompt_text = prompt_text
        self._prompt_tokens = prompt_tokens
        self._temperature = temperature
        self._top_p = top_p
        self._rng = random.Random(seed)
        self.response_text = ""

    @property
    def prompt_tokens(self) -> int:
        return self._prompt_tokens

    @property
    def llm_forward_tokens(self) -> None:
        """TGI does not report what its prefix cache saved: unknowable."""
        return None

    def parameters(self, max_tokens: int) -> dict[str, Any]:
        """`/generate` parameters for one candidate, valid under TGI's validation rules."""
        parameters: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "details": True,
            "decoder_input_details": False,
            "return_full_text": False,
        }
        if self._temperature == 0.0:
            parameters["do_sample"] = False  # TGI rejects temperature 0: greedy is do_sample=false
        else:
            parameters.update(do_sample=True, temperature=self._temperature, seed=self._rng.randrange(2**31 - 1))
            if self._top_p < 1.0:
                parameters["top_p"] = self._top_p
        return parameters

    def _draft_round(self, num_candidates: int, max_tokens: int) -> tuple[list[Candidate], int]:
        inputs = self._prompt_text + _chat.neutralize_text(self.response_text, self._backend.tokenizer)
        futures = [self._backend.submit(inputs, self.parameters(max_tokens)) for _ in range(num_candidates)]
        answers = [future.result() for future in futures]
        return [_candidate(body) for body, _ in answers], sum(retries for _, retries in answers)

    def _accept(self, candidate: Candidate) -> None:
        self.response_text += candidate.text


def _candidate(body: dict[str, Any]) -> Candidate:
    """A candidate from TGI's answer: ids and the segment boundary from `details.tokens`."""
    details = body["details"]
    tokens = details.get("tokens") or []
    hit_eos = details.get("finish_reason") in ("eos_token", "stop_sequence")
    ids = tuple(int(token["id"]) for token in tokens)
    pieces = [str(token.get("text", "")) for token in tokens if not token.get("special")]
    text, ends = _text.ends_from_pieces(pieces)
    generated = str(body.get("generated_text", text))
    if text != generated:
        # TGI's per-token texts do not add up to its text (a tokenizer quirk): trust the text, keep counts.
        text, ends = generated, tuple(min(end, len(generated)) for end in ends)
    return Candidate(text, ids, "eos" if hit_eos else "length", ends)
