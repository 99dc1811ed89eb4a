"""The independent judge: a linear Bradley-Terry head on MiniLM embeddings.

No method optimises it (the steering reward uses MiniLM only for prompt/answer cosine relevance),
so it checks that a method tuned to the steering reward also wins on a scorer it never saw.
Trained from HH-RLHF preference pairs by `stars-guard train-judge`; the weights ship in this
package (`bt_head.json`), so judging needs no network.

Features: e(answer), the normalised MiniLM embedding of the answer; score = w . e(answer). A
prompt-interaction block (e(prompt) * e(answer)) was tried and added nothing on held-out pairs
(64.7% with it, 64.9% without, seed 0), and it would span the steering reward's relevance term
(cosine = sum of that block), which the judge must stay independent of. Training maximises the Bradley-Terry likelihood
P(chosen > rejected) = sigmoid(w . (f_chosen - f_rejected)) with an L2 penalty (L-BFGS, deterministic).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS_FILE = "bt_head.json"
FEATURES = "e_answer: all-MiniLM-L6-v2 embedding of the answer, normalised"


@dataclass(frozen=True)
class PreferencePair:
    """One HH-RLHF row reduced to the last human turn and the two final assistant answers."""

    prompt: str
    chosen: str
    rejected: str


def split_dialogue(dialogue: str) -> tuple[str, str]:
    """(last human turn, last assistant answer) of an HH dialogue."""
    head, marker, answer = dialogue.rpartition("\n\nAssistant:")
    if not marker:
        raise ValueError("not an HH-RLHF dialogue: no '\\n\\nAssistant:' turn")
    prompt = head.rpartition("\n\nHuman:")[2]
    return prompt.strip(), answer.strip()


def load_pairs(path: str | Path, count: int | None = None) -> list[PreferencePair]:
    """Preference pairs of an HH-RLHF JSONL(.gz) file; rows whose answers are identical are skipped."""
    path = Path(path)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    pairs: list[PreferencePair] = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, chosen = split_dialogue(row["chosen"])
                _, rejected = split_dialogue(row["rejected"])
            except (json.JSONDecodeError, KeyError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: not an HH-RLHF preference row ({exc})") from exc
            if chosen != rejected:
                pairs.append(PreferencePair(prompt, chosen, rejected))
            if count is not None and len(pairs) == count:
                break
    return pairs


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Normalised MiniLM embeddings (the packaged model, shared with GuardReward)."""
    from stars_guard.adapters.guard_reward import minilm_encoder

    if not texts:
        return np.zeros((0, 384))
    return np.asarray(
        minilm_encoder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True),
        dtype=np.float64,
    )


def features(answers: Sequence[str]) -> np.ndarray:
    """Judge features of answers (see the module docstring)."""
    return embed(answers)


@dataclass
class PairFeatures:
    """Embedded pairs: what training needs, computed once."""

    chosen: np.ndarray
    rejected: np.ndarray

    @classmethod
    def from_pairs(cls, pairs: Sequence[PreferencePair]) -> PairFeatures:
        return cls(features([pair.chosen for pair in pairs]), features([pair.rejected for pair in pairs]))

    def __len__(self) -> int:
        return len(self.chosen)


@dataclass
class TrainResult:
    """Weights and how well they rank pairs they were not trained on."""

    weights: np.ndarray
    train_accuracy: float
    heldout_accuracy: float
    train_pairs: int
    heldout_pairs: int
    seed: int
    l2: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "bradley-terry-linear",
            "features": FEATURES,
            "seed": self.seed,
            "l2": self.l2,
            "train_pairs": self.train_pairs,
            "heldout_pairs": self.heldout_pairs,
            "train_accuracy": round(self.train_accuracy, 4),
            "heldout_accuracy": round(self.heldout_accuracy, 4),
            "weights": [round(float(value), 7) for value in self.weights],
        }


def pairwise_accuracy(weights: np.ndarray, data: PairFeatures, index: np.ndarray) -> float:
    """Share of pairs where the chosen answer scores above the rejected one (ties half)."""
    margin = (data.chosen[index] - data.rejected[index]) @ weights
    return float(np.mean(np.where(margin == 0, 0.5, margin > 0)))


def split_pairs(count: int, seed: int = 0, train_fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and held-out indices of `count` pairs: a seeded permutation, the same in every run."""
    order = np.random.default_rng(seed).permutation(count)
    cut = round(train_fraction * count)
    return np.sort(order[:cut]), np.sort(order[cut:])


def train(data: PairFeatures, *, seed: int = 0, train_fraction: float = 0.8, l2: float = 1e-2) -> TrainResult:
    """Fit the head on a seeded `train_fraction` of the pairs; report held-out pairwise accuracy."""
    from scipy.optimize import minimize

    train_index, heldout_index = split_pairs(len(data), seed, train_fraction)
    diff = data.chosen[train_index] - data.rejected[train_index]

    def loss(weights: np.ndarray) -> tuple[float, np.ndarray]:
        margin = diff @ weights
        value = np.logaddexp(0.0, -margin).mean() + 0.5 * l2 * weights @ weights
        grad = -(diff.T @ (1.0 / (1.0 + np.exp(margin)))) / len(diff) + l2 * weights
        return float(value), grad

    fit = minimize(loss, np.zeros(diff.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    weights = np.asarray(fit.x)
    return TrainResult(
        weights=weights,
        train_accuracy=pairwise_accuracy(weights, data, train_index),
        heldout_accuracy=pairwise_accuracy(weights, data, heldout_index) if len(heldout_index) else float("nan"),
        train_pairs=len(train_index),
        heldout_pairs=len(heldout_index),
        seed=seed,
        l2=l2,
    )


def shipped_weights_path() -> Path:
    """Where the packaged weights live (inside `stars_guard.bench`)."""
    return Path(str(resources.files("stars_guard.bench").joinpath(WEIGHTS_FILE)))


def save(result: TrainResult, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(result.as_dict(), indent=1) + "\n")
    return path


class BTJudge:
    """Scores final answers with trained weights (the packaged ones by default)."""

    def __init__(self, path: str | Path | None = None) -> None:
        source = Path(path) if path is not None else shipped_weights_path()
        if not source.is_file():
            raise FileNotFoundError(f"judge weights not found at {source}: run `stars-guard train-judge`")
        self.meta: dict[str, Any] = json.loads(source.read_text())
        self.weights = np.asarray(self.meta["weights"], dtype=np.float64)
        self.source = source

    def score(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        """Judge score of each (prompt, answer); compare only answers to the same prompt.

        The features do not use the prompt (see the module docstring); it is taken so a judge that
        does can replace this one without changing callers.
        """
        if len(prompts) != len(answers):
            raise ValueError("one prompt per answer")
        return [float(value) for value in features(answers) @ self.weights]

    def describe(self) -> dict[str, Any]:
        return {key: value for key, value in self.meta.items() if key != "weights"}
