"""`VLLMClassifyRewardModel`: rewards from vLLM's `/classify` for Llama/Qwen reward models (e.g. Skywork-Reward).

Such reward models read a whole chat (every turn of the conversation and the assistant's answer)
rendered with their own chat template, and their head's raw logit is the reward:
`use_activation: false` asks vLLM not to squash it (schema:
vllm/entrypoints/pooling/classify/protocol.py and pooling/base/protocol.py).

Two ways to send the chats, both real vLLM request shapes:
- with a local `tokenizer` (the reward model's directory): render each chat locally and send one
  batched `{"input": [text, ...], "add_special_tokens": false}` request (the template already
  carries BOS), split into chunks of `max_batch_size`;
- without one: one `{"messages": [...]}` request per answer, sent concurrently, and vLLM applies the
  model's template itself.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stars_guard.adapters import _chat, _text
from stars_guard.adapters._http import HTTPClient, RetryPolicy, Timeouts
from stars_guard.errors import RewardError
from stars_guard.messages import ChatMessage, as_conversation
from stars_guard.specs import server_root


class VLLMClassifyRewardModel:
    """Scores partial answers with a vLLM `/classify` server (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        tokenizer: str | Path | Any | None = None,
        label_index: int = 0,
        max_batch_size: int = 64,
        max_concurrency: int = 8,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.base_url = server_root(base_url)
        self.client = HTTPClient(
            self.base_url,
            error_type=RewardError,
            service="reward service (vLLM /classify)",
            timeouts=timeouts,
            retry=retry,
            api_key=api_key,
        )
        self.model = model
        self.tokenizer = _text.load_tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
        self.label_index = label_index
        self.max_batch_size = max(1, max_batch_size)
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_concurrency), thread_name_prefix="stars-classify")
        self.retries = 0

    @property
    def name(self) -> str:
        return f"vllm-classify:{self.model or self.base_url}"

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        turns = [message.as_dict() for message in as_conversation(conversation)]
        if self.tokenizer is not None:
            texts = [self._render(turns, response) for response in responses]
            scores: list[float] = []
            for start in range(0, len(texts), self.max_batch_size):
                chunk = texts[start : start + self.max_batch_size]
                scores.extend(self._classify({"input": chunk, "add_special_tokens": False}, len(chunk)))
            return scores
        # vLLM renders these itself and parses special tokens in the result: break their common forms.
        chats = _chat.neutralize_turns([*turns, {"role": "assistant", "content": ""}])
        futures = [
            # Each worker runs in a copy of this context, so the request's deadline bounds its call too.
            self._pool.submit(
                contextvars.copy_context().run,
                self._classify,
                {"messages": [*chats[:-1], {"role": "assistant", "content": _chat.neutralize_text(response)}]},
                1,
            )
            for response in responses
        ]
        return [future.result()[0] for future in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def _render(self, turns: list[dict[str, str]], response: str) -> str:
        """The chat as text vLLM tokenises with special-token parsing on: control-token text in
        content is broken first (`_chat.neutralize_special_tokens`), so it cannot forge a turn."""
        finished = [*turns, {"role": "assistant", "content": response}]
        return _chat.render_chat(self.tokenizer, finished, add_generation_prompt=False, neutralize=True)

    def _classify(self, payload: dict[str, Any], expected: int) -> list[float]:
        body: dict[str, Any] = {**payload, "use_activation": False}
        if self.model:
            body["model"] = self.model
        result = self.client.post("/classify", body)
        self.retries += result.retries
        data = result.data.get("data") if isinstance(result.data, dict) else None
        if not isinstance(data, list) or len(data) != expected:
            raise RewardError(f"vLLM at {self.base_url} returned {str(result.data)[:200]} for {expected} inputs")
        scores = []
        for item in sorted(data, key=lambda entry: entry.get("index", 0)):
            probs = item.get("probs")
            if not isinstance(probs, list) or len(probs) <= self.label_index:
                raise RewardError(f"vLLM at {self.base_url} returned no score {self.label_index} in {item!r}")
            scores.append(float(probs[self.label_index]))
        return scores
