"""`stars-guard serve-reward`: any local reward scorer behind TEI's `/predict` API.

One reward service can then serve many chat replicas, and `TEIRewardModel` (or any TEI client)
talks to it exactly as to text-embeddings-inference. The request and response shapes follow TEI's
router (router/src/http/types.rs and router/src/lib.rs of huggingface/text-embeddings-inference):

- `POST /predict {"inputs": ..., "raw_scores": bool, "truncate": bool}` where `inputs` is a string,
  a `[question, answer]` pair, or a batch of `[text]` / `[question, answer]` items; the answer is
  `[{"score", "label"}]` per input (a batch gives a list of those). The scorer is one reward head
  with the label `reward`; like TEI with a 1-label model, `raw_scores: false` applies a sigmoid.
- errors are `{"error": str, "error_type": str}` with TEI's status codes (413 for a batch over
  `max_client_batch_size`, 400 for empty input, 422 for a malformed body, 424 when the scorer fails).
- `GET /health`, `GET /info` (TEI's fields; the model type is a 1-label "reranker" head).

Concurrent requests are batched (`stars_guard.serving.batching.MicroBatcher`): requests arriving
while the scorer is busy (or within `max_wait_ms`) are scored together, one `score` call per
distinct prompt, so replicas that send their K candidates at the same time share a forward pass.
Scoring runs on the batcher's one thread, and handlers await it through `bridge.result_of`; the
event loop stays free to accept requests. Binds 127.0.0.1 unless told otherwise.

This module is an I/O edge (starlette, uvicorn); nothing in the core imports it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stars_guard import __version__
from stars_guard.bridge import result_of
from stars_guard.protocols import RewardModel
from stars_guard.serving.batching import MicroBatcher

LABEL = "reward"


class InputError(ValueError):
    """A request TEI would refuse; carries TEI's status code and error type."""

    def __init__(self, message: str, status: int, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


@dataclass
class BatchStats:
    """What the batcher did, for /info and tests: requests in, scorer calls out."""

    requests: int = 0
    texts: int = 0
    batches: int = 0
    scorer_calls: int = 0
    largest_batch: int = 0
    started: float = field(default_factory=time.time)


class RewardBatcher:
    """Collects concurrent scoring requests into batches for one scorer (see the module docstring).

    The batching itself is `MicroBatcher`'s, the same as lockstep serving's `BatchingReward`: a
    batch closes `max_wait_ms` after its first request or at `max_batch_texts` texts, and is
    scored on the batcher's thread while handlers await their share on the event loop.
    """

    def __init__(self, reward: RewardModel, *, max_batch_texts: int = 64, max_wait_ms: float = 2.0) -> None:
        self.reward = reward
        self.max_batch_texts = max(1, max_batch_texts)
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.stats = BatchStats()
        self._batcher: MicroBatcher[list[tuple[str, str]], list[float]] | None = None

    async def start(self) -> None:
        self._batcher = MicroBatcher(
            self._score_batch,
            window_s=self.max_wait_s,
            max_size=self.max_batch_texts,
            size=len,
            name="stars-reward",
        )

    async def stop(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()

    async def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        if self._batcher is None:
            raise RuntimeError("the batcher is not started")
        self.stats.requests += 1
        self.stats.texts += len(pairs)
        return await result_of(self._batcher.submit(pairs))

    def _score_batch(self, batch: list[list[tuple[str, str]]]) -> list[list[float]]:
        """One scorer call per distinct prompt, each with every answer to that prompt in this batch."""
        by_prompt: dict[str, list[tuple[int, int]]] = {}
        for request_index, pairs in enumerate(batch):
            for pair_index, (prompt, _) in enumerate(pairs):
                by_prompt.setdefault(prompt, []).append((request_index, pair_index))
        results: list[list[float]] = [[0.0] * len(pairs) for pairs in batch]
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, sum(len(pairs) for pairs in batch))
        for prompt, slots in by_prompt.items():
            answers = [batch[r][p][1] for r, p in slots]
            self.stats.scorer_calls += 1
            for (r, p), value in zip(slots, self._call(prompt, answers), strict=True):
                results[r][p] = value
        return results

    def _call(self, prompt: str, answers: list[str]) -> list[float]:
        scores = [float(value) for value in self.reward.score(prompt, answers)]
        if len(scores) != len(answers):
            raise RuntimeError(f"scorer {self.reward.name!r} returned {len(scores)} scores for {len(answers)} texts")
        return scores


def parse_inputs(inputs: Any) -> tuple[list[tuple[str, str]], bool]:
    """TEI's `PredictInput`: (pairs as (question, answer), whether the request was a batch).

    A lone text is scored as an answer to an empty question.
    """

    def sequence(item: Any) -> tuple[str, str]:
        if isinstance(item, list) and all(isinstance(text, str) for text in item):
            if len(item) == 1:
                return "", item[0]
            if len(item) == 2:
                return item[0], item[1]
        raise InputError(
            "invalid `inputs`: expected a string, a pair of strings [string, string] or a batch of mixed "
            "strings and pairs [[string], [string, string], ...]",
            422,
            "validation",
        )

    if isinstance(inputs, str):
        pairs, batched = [("", inputs)], False
    elif isinstance(inputs, list) and inputs and all(isinstance(item, str) for item in inputs):
        pairs, batched = [sequence(inputs)], False
    elif isinstance(inputs, list) and inputs:
        pairs, batched = [sequence(item) for item in inputs], True
    else:
        raise InputError("`inputs` cannot be empty", 400, "empty")
    for question, answer in pairs:
        if not question and not answer:
            raise InputError("`inputs` cannot be empty", 400, "empty")
    return pairs, batched


def create_app(
    reward: RewardModel,
    *,
    max_client_batch_size: int = 32,
    max_batch_texts: int = 64,
    max_wait_ms: float = 2.0,
) -> Starlette:
    """The ASGI app serving `reward` (see the module docstring)."""
    batcher = RewardBatcher(reward, max_batch_texts=max_batch_texts, max_wait_ms=max_wait_ms)

    def error(message: str, status: int, error_type: str) -> JSONResponse:
        return JSONResponse({"error": message, "error_type": error_type}, status_code=status)

    async def predict(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error(f"Failed to parse the request body as JSON: {exc}", 422, "validation")
        if not isinstance(body, dict) or "inputs" not in body:
            return error("missing field `inputs`", 422, "validation")
        raw_scores = body.get("raw_scores", False)
        if not isinstance(raw_scores, bool) or not isinstance(body.get("truncate", False), bool):
            return error("`raw_scores` and `truncate` must be booleans", 422, "validation")
        try:
            pairs, batched = parse_inputs(body["inputs"])
        except InputError as exc:
            return error(str(exc), exc.status, exc.error_type)
        if batched and len(pairs) > max_client_batch_size:
            return error(
                f"batch size {len(pairs)} > maximum allowed batch size {max_client_batch_size}", 413, "validation"
            )
        try:
            scores = await batcher.score(pairs)
        except Exception as exc:
            return error(f"reward scorer {reward.name!r} failed: {type(exc).__name__}: {exc}", 424, "backend")
        predictions = [[{"score": _reported(value, raw_scores), "label": LABEL}] for value in scores]
        return JSONResponse(predictions if batched else predictions[0])

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def info(_: Request) -> Response:
        return JSONResponse(
            {
                "model_id": reward.name,
                "model_sha": None,
                "model_dtype": "float32",
                "model_type": {"reranker": {"id2label": {"0": LABEL}, "label2id": {LABEL: 0}}},
                "max_concurrent_requests": 512,
                "max_input_length": 512,
                "max_batch_tokens": 16384,
                "max_batch_requests": None,
                "max_client_batch_size": max_client_batch_size,
                "auto_truncate": True,
                "tokenization_workers": 1,
                "version": f"stars-guard-{__version__}",
                "sha": None,
                "docker_label": None,
                "batching": {**batcher.stats.__dict__, "max_batch_texts": batcher.max_batch_texts},
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/info", info, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


def _reported(value: float, raw_scores: bool) -> float:
    if raw_scores:
        return value
    return 1.0 / (1.0 + math.exp(-value)) if value >= 0 else math.exp(value) / (1.0 + math.exp(value))


def serve(
    reward: RewardModel,
    *,
    host: str = "127.0.0.1",
    port: int = 8081,
    max_client_batch_size: int = 32,
    max_batch_texts: int = 64,
    max_wait_ms: float = 2.0,
    log_level: str = "warning",
    announce: Sequence[str] = (),
) -> None:
    """Run the reward service until interrupted (the batching settings are `create_app`'s)."""
    import uvicorn

    app = create_app(
        reward, max_client_batch_size=max_client_batch_size, max_batch_texts=max_batch_texts, max_wait_ms=max_wait_ms
    )
    for line in announce:
        print(line, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
