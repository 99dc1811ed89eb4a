"""`TEIRewardModel`: rewards from a text-embeddings-inference `/predict` endpoint (or `stars-guard serve-reward`).

TEI serves sequence-classification heads (BERT, RoBERTa, DeBERTa-v2, ModernBERT reward models).
Each (conversation, partial answer) is sent as a pair, the conversation as the first text (a single
user turn as its bare text; several turns as a `User: ... Assistant: ...` transcript);
`raw_scores: true` keeps the head's logit (without it TEI puts a 1-label model through a sigmoid),
`truncate: true` lets TEI cut inputs that are too long instead of failing. TEI refuses batches
over its `max_client_batch_size` (413), so the client reads that limit from `/info` once and
splits larger calls. Failures follow `stars_guard.adapters._http` and end in `RewardError`, which the
engine's `on_reward_error` policy turns into a stop, a refusal or fail-open.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from stars_guard.adapters import _chat
from stars_guard.adapters._http import HTTPClient, RetryPolicy, Timeouts
from stars_guard.errors import RewardError, StarsGuardError
from stars_guard.messages import ChatMessage, as_conversation, render_transcript

DEFAULT_CLIENT_BATCH = 32  # TEI's own default for --max-client-batch-size


class TEIRewardModel:
    """Scores partial answers with a TEI-compatible `/predict` service (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        label: str | None = None,
        max_batch_size: int | None = None,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = HTTPClient(
            self.base_url,
            error_type=RewardError,
            service="reward service (TEI /predict)",
            timeouts=timeouts,
            retry=retry,
            api_key=api_key,
        )
        self.label = label
        self._max_batch = max_batch_size
        self._model_id: str | None = None
        self._lock = threading.Lock()
        self.retries = 0

    @property
    def name(self) -> str:
        return f"tei:{self._model_id or self.base_url}"

    @property
    def max_batch_size(self) -> int:
        """Texts per request: the server's `max_client_batch_size` unless set by hand."""
        with self._lock:
            if self._max_batch is None:
                self._max_batch = DEFAULT_CLIENT_BATCH
                try:
                    info = self.client.get("/info").data
                except StarsGuardError as exc:
                    if getattr(exc, "status_code", None) is None:
                        self._max_batch = None  # unreachable: ask again next time
                        raise
                    info = {}
                if isinstance(info, dict):
                    self._model_id = info.get("model_id") or None
                    limit = info.get("max_client_batch_size")
                    if isinstance(limit, int) and limit > 0:
                        self._max_batch = limit
            return self._max_batch

    def score(self, conversation: Sequence[ChatMessage] | str, responses: Sequence[str]) -> list[float]:
        # TEI tokenises the pair with special-token parsing on: a typed `[SEP]` must not split it.
        prompt = _chat.neutralize_common_control_tokens(render_transcript(as_conversation(conversation)))
        scores: list[float] = []
        size = self.max_batch_size
        for start in range(0, len(responses), size):
            chunk = responses[start : start + size]
            result = self.client.post(
                "/predict",
                {
                    "inputs": [[prompt, _chat.neutralize_common_control_tokens(response)] for response in chunk],
                    "raw_scores": True,
                    "truncate": True,
                },
            )
            self.retries += result.retries
            scores.extend(self._read(result.data, len(chunk)))
        return scores

    def close(self) -> None:
        self.client.close()

    def _read(self, data: Any, expected: int) -> list[float]:
        """One score per input from TEI's `[[{"score", "label"}, ...], ...]` (sorted by score)."""
        if expected == 1 and isinstance(data, list) and data and isinstance(data[0], dict):
            data = [data]  # a single input may come back unbatched
        if not isinstance(data, list) or len(data) != expected:
            raise RewardError(f"TEI at {self.base_url} returned {str(data)[:200]} for {expected} inputs")
        scores = []
        for predictions in data:
            if not isinstance(predictions, list) or not predictions:
                raise RewardError(f"TEI at {self.base_url} returned an empty prediction: {predictions!r}")
            scores.append(self._pick(predictions))
        return scores

    def _pick(self, predictions: list[dict[str, Any]]) -> float:
        if self.label is None:
            if len(predictions) > 1:
                labels = ", ".join(str(item.get("label")) for item in predictions)
                raise RewardError(
                    f"the model at {self.base_url} has several labels ({labels}): pass label=<the reward label>"
                )
            return float(predictions[0]["score"])
        for item in predictions:
            if item.get("label") == self.label:
                return float(item["score"])
        raise RewardError(f"label {self.label!r} not among the predictions of {self.base_url}: {predictions!r}")
