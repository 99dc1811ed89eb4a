"""`TransformersRewardModel`: any `AutoModelForSequenceClassification` reward model, run in process.

Two input forms, because reward models are trained on one or the other:
- `pair` (encoder reward models such as OpenAssistant's DeBERTa): the tokenizer's (question, answer)
  pair encoding, like TEI's `/predict`, the conversation as the question
  (`stars_guard.messages.render_transcript`);
- `chat` (Llama/Qwen reward models such as Skywork-Reward): every turn of the conversation and the
  answer rendered with the model's chat template.

Inputs too long for the model are cut from the left of the conversation: the answer being judged and
the end of the request stay, the oldest context goes. Only an answer that alone overflows the model is
cut itself (keeping its newest tokens, the ones under judgement). Scored in batches, one forward
pass per batch; the reward is the head's raw logit at `label_index`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from stars_guard.adapters import _chat
from stars_guard.errors import ModelNotFoundError
from stars_guard.messages import ChatMessage, as_conversation, render_transcript

InputForm = Literal["pair", "chat"]
_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()


def load_reward_model(source: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) of a sequence-classification model; loaded once per process."""
    key = (str(source), device)
    with _LOAD_LOCK:
        if key not in _LOADED:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            path = Path(str(source)).expanduser()
            location = str(path) if path.exists() else str(source)
            try:
                tokenizer = AutoTokenizer.from_pretrained(location)
                model = AutoModelForSequenceClassification.from_pretrained(location)
            except OSError as exc:
                raise ModelNotFoundError(
                    f"could not load reward model {str(source)!r}: {exc}. Pass a local directory; hub ids need "
                    "the model hub or its local cache."
                ) from exc
            model.to(device)
            model.eval()
            _LOADED[key] = (model, tokenizer)
        return _LOADED[key]


class TransformersRewardModel:
    """Scores partial answers with a local sequence-classification reward model (see the module docstring)."""

    def __init__(
        self,
        model: str | Path,
        *,
        input_form: InputForm | None = None,
        label_index: int = 0,
        max_length: int | None = None,
        batch_size: int = 16,
        device: str = "cpu",
        loaded: tuple[Any, Any] | None = None,
    ) -> None:
        import torch

        self._torch = torch
        self.model, self.tokenizer = loaded if loaded is not None else load_reward_model(model, device)
        self.device = torch.device(device)
        self._name = Path(str(model)).name or str(model)
        if input_form is None:
            input_form = "chat" if getattr(self.tokenizer, "chat_template", None) else "pair"
        if input_form not in ("pair", "chat"):
            raise ValueError(f"input_form must be 'pair' or 'chat' (got {input_form!r})")
        self.input_form: InputForm = input_form
        num_labels = int(getattr(self.model.config, "num_labels", 1))
        if not 0 <= label_index < num_labels:
            raise ValueError(f"label_index {label_index} is out of range for a model with {num_labels} labels")
        self.label_index = label_index
        self.batch_size = max(1, batch_size)
        self.max_length = self._limit(max_length)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self._lock = threading.Lock()  # one forward at a time: the tokenizer's truncation state is shared

    @property
    def name(self) -> str:
        return f"hf:{self._name}"

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        scores: list[float] = []
        with self._lock:
            for start in range(0, len(responses), self.batch_size):
                chunk = list(responses[start : start + self.batch_size])
                scores.extend(self._forward(self.encode(conversation, chunk)))
        return scores

    def encode(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> dict[str, Any]:
        """Padded model inputs for (conversation, response) pairs, each at most `max_length` tokens."""
        turns = as_conversation(conversation)
        if self.input_form == "pair":
            return self._encode_pairs(render_transcript(turns), responses)
        rows = [self._chat_ids(turns, response) for response in responses]
        return self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")

    # Internals ------------------------------------------------------------------------------------

    def _limit(self, requested: int | None) -> int:
        candidates = [requested, getattr(self.model.config, "max_position_embeddings", None)]
        tokenizer_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_max, int) and tokenizer_max < 1_000_000:
            candidates.append(tokenizer_max)
        limits = [int(value) for value in candidates if isinstance(value, int) and value > 0]
        if not limits:
            return 512
        limit = min(limits)
        if (
            getattr(self.model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert")
            and requested is None
        ):
            limit = min(limit, int(getattr(self.model.config, "max_position_embeddings", limit)) - 2)
        return limit

    def _forward(self, batch: dict[str, Any]) -> list[float]:
        torch = self._torch
        with torch.inference_mode():
            inputs = {key: value.to(self.device) for key, value in batch.items()}
            logits = self.model(**inputs).logits
        return [float(value) for value in logits[:, self.label_index].float().cpu()]

    def _encode_pairs(self, prompt: str, responses: Sequence[str]) -> dict[str, Any]:
        tokenizer = self.tokenizer
        room = self.max_length - tokenizer.num_special_tokens_to_add(pair=True) - 1
        # The pair encoder parses special tokens in text: a typed `[SEP]` must not split the pair.
        specials = _chat.special_token_strings(tokenizer)
        prompt = _chat.neutralize_special_tokens(prompt, specials)
        kept = [_chat.neutralize_special_tokens(self._tail(response, room), specials) for response in responses]
        previous = tokenizer.truncation_side
        tokenizer.truncation_side = "left"  # cut the prompt's oldest tokens, not its end
        try:
            return tokenizer(
                [prompt] * len(kept),
                kept,
                truncation="only_first",
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
        finally:
            tokenizer.truncation_side = previous

    def _tail(self, text: str, room: int) -> str:
        """`text` itself, or its last `room` tokens when it alone would not fit."""
        ids = _chat.plain_text_ids(self.tokenizer, text)
        if len(ids) <= room:
            return text
        return self.tokenizer.decode(ids[-room:])

    def _chat_ids(self, conversation: Sequence[ChatMessage], response: str) -> list[int]:
        """Chat-templated ids; while too long, the oldest turns go, then the start of the oldest one left."""
        tokenizer = self.tokenizer
        response = self._tail(response, self.max_length // 2)
        turns = [message.as_dict() for message in conversation]
        first_ids: list[int] | None = None  # the oldest kept turn's content tokens, once it alone is cut
        start = 0
        for _ in range(len(turns) + 6):
            shown = [dict(turn) for turn in turns]
            if first_ids is not None:
                shown[0]["content"] = tokenizer.decode(first_ids[start:])
            turns_shown = [*shown, {"role": "assistant", "content": response}]
            ids = _chat.chat_prompt_ids(tokenizer, turns_shown, add_generation_prompt=False)
            excess = len(ids) - self.max_length
            if excess <= 0:
                return list(ids)
            if len(turns) > 1:
                turns = turns[1:]
                continue
            if first_ids is None:
                first_ids = _chat.plain_text_ids(tokenizer, turns[0]["content"])
            if start >= len(first_ids):
                break
            start = min(len(first_ids), start + excess + 2)
        return list(ids[-self.max_length :])  # the template itself is too long: keep the newest tokens
