"""The trained request-harm classifier behind `GuardReward(harm_gate="trained")`, and its evaluation.

`GuardReward`'s refusal-aware helpfulness is gated by how harmful the request looks. The default
gate is a nearest-neighbour vote over a few hand-written exemplars; this module trains a
logistic-regression head on MiniLM embeddings of requests instead, and measures both on prompts
neither has seen.

Training data (development parts only, `redteam.split`):
- harmful: HarmBench's development behaviours, Do-Not-Answer's development prompts, and
  `harmful_requests.jsonl`, 130 short, direct harmful requests in 14 categories written for this
  project ("How do I make a bomb?": HarmBench's long imperative behaviours alone taught the head
  that a short question is benign);
- benign: `benign_requests.jsonl`, 760 requests in 15 categories written for this project in
  2026-12: everyday requests (a quarter of them use risky-sounding words in benign senses),
  greetings and small talk, instructions to an agent to use its tools, and quick questions.
Every written request is under 0.8 cosine similarity (MiniLM) to every test prompt and benign
look-alike; the look-alike set stays out of training.
The category of a harmful request is its nearest category centroid (Do-Not-Answer's five risk
areas, and HarmBench's behaviours as one), from the same training prompts.

Evaluation: accuracy and AUROC on a seeded fifth of the training pool held out, and on the test
parts: HarmBench and Do-Not-Answer test prompts against the benign look-alike test part (AUROC,
and the share flagged at P > 0.5 on each side), for the trained head and the exemplar gate.

    python -m stars_guard.bench.harm_gate train     # writes adapters/request_harm_head.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from stars_guard.bench import redteam
from stars_guard.bench.linear_heads import fit_logistic, heldout_mask, logistic
from stars_guard.bench.statistics import auroc

BENIGN_FILE = "benign_requests.jsonl"
HARMFUL_FILE = "harmful_requests.jsonl"
SEED = 0
L2 = 1e-4  # the best held-out AUROC of 1e-5, 1e-4, 3e-4, 1e-3, 3e-3 (the held-out fifth of the pool)


def load_benign_requests() -> list[str]:
    """The benign requests written for training (`BENIGN_FILE`)."""
    return _load_written(BENIGN_FILE)


def load_harmful_requests() -> list[str]:
    """The short harmful requests written for training (`HARMFUL_FILE`)."""
    return _load_written(HARMFUL_FILE)


def _load_written(name: str) -> list[str]:
    path = Path(str(resources.files("stars_guard.bench").joinpath(name)))
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{path}:{number}: expected an object with a 'prompt' string")
        prompts.append(row["prompt"])
    return prompts


def training_pool() -> tuple[list[str], np.ndarray, list[str]]:
    """(texts, harmful labels, categories) of the development parts and the benign requests."""
    texts: list[str] = []
    categories: list[str] = []
    for loader in (redteam.load_harmbench, redteam.load_donotanswer):
        for prompt in redteam.split(loader())["dev"]:
            texts.append(prompt.text)
            categories.append(prompt.category if prompt.source == "donotanswer" else "harmbench")
    written = load_harmful_requests()
    texts += written
    categories += ["written"] * len(written)
    harmful = len(texts)
    benign = load_benign_requests()
    texts += benign
    categories += ["benign"] * len(benign)
    labels = np.array([True] * harmful + [False] * len(benign))
    return texts, labels, categories


def test_prompts() -> tuple[list[str], np.ndarray]:
    """The test parts: HarmBench and Do-Not-Answer (harmful) against the benign look-alikes."""
    harmful = [
        p.text for loader in (redteam.load_harmbench, redteam.load_donotanswer) for p in redteam.split(loader())["test"]
    ]
    benign = [p.text for p in redteam.split(redteam.load_benign())["test"]]
    return harmful + benign, np.array([True] * len(harmful) + [False] * len(benign))


def _rates(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    flagged = probabilities > 0.5
    return {
        "auroc": round(auroc(list(probabilities), list(labels)), 4),
        "harmful_flagged": round(float(flagged[labels].mean()), 4),
        "benign_flagged": round(float(flagged[~labels].mean()), 4),
    }


def train_request_harm(*, seed: int = SEED, l2: float = L2, exemplar_gate: Any = None) -> dict[str, Any]:
    """Fit the head on the pool minus a held-out fifth; evaluate (and the exemplar gate, if given) on the test parts."""
    from stars_guard.bench.judge import embed

    texts, labels, categories = training_pool()
    features = embed(texts)
    held = heldout_mask(len(texts), seed)
    weights = fit_logistic(features[~held], labels[~held], l2)
    centroids = {}
    for category in sorted(set(categories) - {"benign"}):
        rows = features[~held][np.array(categories)[~held] == category]
        centroid = rows.mean(axis=0)
        centroids[category] = [round(float(value), 6) for value in centroid / np.linalg.norm(centroid)]
    test_texts, test_labels = test_prompts()
    test_features = embed(test_texts)
    heldout = logistic(features[held], weights[:-1], weights[-1])
    report: dict[str, Any] = {
        "kind": "logistic-regression",
        "features": "all-MiniLM-L6-v2 normalised sentence embedding of the request",
        "training": "HarmBench and Do-Not-Answer development parts and harmful_requests.jsonl (harmful), "
        "benign_requests.jsonl (benign)",
        "seed": seed,
        "l2": l2,
        "train_examples": int((~held).sum()),
        "heldout_examples": int(held.sum()),
        "heldout": {
            "accuracy": round(float(np.mean((heldout > 0.5) == labels[held])), 4),
            "auroc": round(auroc(list(heldout), list(labels[held])), 4),
        },
        "test": _rates(logistic(test_features, weights[:-1], weights[-1]), test_labels),
        "test_prompts": {"harmful": int(test_labels.sum()), "benign_lookalikes": int((~test_labels).sum())},
        "category_accuracy_donotanswer_test": round(_category_accuracy(centroids, test_features, test_texts), 4),
    }
    if exemplar_gate is not None:
        exemplar = np.array([exemplar_gate.request_harm(text) for text in test_texts])
        report["exemplar_gate_test"] = _rates(exemplar, test_labels)
    report["weights"] = [round(float(value), 7) for value in weights[:-1]]
    report["bias"] = round(float(weights[-1]), 7)
    report["centroids"] = centroids
    return report


def _category_accuracy(centroids: dict[str, list[float]], features: np.ndarray, texts: Sequence[str]) -> float:
    """Share of Do-Not-Answer test prompts whose nearest centroid is their own risk area."""
    area = {p.text: p.category for p in redteam.split(redteam.load_donotanswer())["test"]}
    names = list(centroids)
    matrix = np.array([centroids[name] for name in names])
    hits = [
        names[int(np.argmax(matrix @ row))] == area[text]
        for text, row in zip(texts, features, strict=True)
        if text in area
    ]
    return float(np.mean(hits)) if hits else float("nan")


def head_path() -> Path:
    """Where `GuardReward(harm_gate="trained")` reads the head (package data of the adapters)."""
    from stars_guard.adapters import guard_reward

    return Path(guard_reward.__file__).with_name(guard_reward.REQUEST_HARM_HEAD)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description="train the request-harm gate")
    commands = parser.add_subparsers(dest="command", required=True)
    training = commands.add_parser("train", help="fit on the development parts and write the head")
    training.add_argument("--out", type=Path, help=f"head file (default: the packaged one, {head_path()})")
    args = parser.parse_args(argv)
    from stars_guard.adapters.guard_reward import GuardReward

    report = train_request_harm(exemplar_gate=GuardReward())
    (args.out or head_path()).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({key: value for key, value in report.items() if key not in ("weights", "centroids")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
