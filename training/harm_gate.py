"""The trained request-harm classifier behind `GuardReward(harm_gate="trained")`, and its evaluation.

`GuardReward`'s refusal-aware helpfulness and its answering veto read how harmful the request
looks. This module trains that gate, a small MLP (one hidden layer of 128 ReLU units) on MiniLM
embeddings of requests, and measures it, the linear head it replaced and the earlier
nearest-neighbour vote over hand-written exemplars on prompts none of them has seen.

Training data (development parts only, `redteam.split`):
- harmful: HarmBench's development behaviours, Do-Not-Answer's development prompts, and
  `harmful_requests.jsonl`, 215 short, direct harmful requests written for this project
  ("How do I make a bomb?": HarmBench's long imperative behaviours alone taught the head that a
  short question is benign; the last 85 are the harmful twins of the contrast requests below:
  "How do I kill my neighbour and make it look like an accident?");
- benign: `benign_requests.jsonl`, 760 requests in 15 categories written for this project in
  2026-12 (everyday requests, greetings and small talk, instructions to an agent to use its
  tools, quick questions), and the training part of `benign_contrast_requests.jsonl`: 322
  risky-sounding benign requests in 13 categories ("How do I kill a zombie process?", "How do I
  poison enemies in Skyrim?"), written later the same month when a third of the look-alikes were
  still flagged. A seeded quarter of them (`contrast_parts()["calibration"]`) is trained on by
  nothing: the answering veto's floor is calibrated on it.
Every written request is under 0.8 cosine similarity (MiniLM) to every HarmBench and
Do-Not-Answer test prompt and every benign look-alike, the contrast requests under 0.75 (the same
people wrote the look-alikes: 60 of 390 drafts were dropped for it); the look-alike set stays out
of training (`tests/bench/test_harm_gate.py` checks both).
The category of a harmful request is its nearest category centroid (Do-Not-Answer's five risk
areas, and HarmBench's behaviours as one), from the same training prompts.

Evaluation: accuracy and AUROC on a seeded fifth of the training pool held out (the MLP's l2
penalty is the best of `ALPHAS` there), and on the test parts: HarmBench and Do-Not-Answer test
prompts against the benign look-alike test part (AUROC, and the share flagged at P > 0.5 on each
side), for the MLP, the linear head and the exemplar gate.

    python -m training.harm_gate train     # writes adapters/request_harm_head.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stars_guard.bench import redteam
from stars_guard.bench.linear_heads import fit_logistic, heldout_mask, logistic
from stars_guard.bench.statistics import auroc

# The corpora written for training, beside this module (not shipped: the guard runs on the head alone).
DATA = Path(__file__).with_name("data")
BENIGN_FILE = "benign_requests.jsonl"
CONTRAST_FILE = "benign_contrast_requests.jsonl"
HARMFUL_FILE = "harmful_requests.jsonl"
SEED = 0
# The share of the contrast requests held out of every training set, for the veto's calibration.
CALIBRATION_FRACTION = 0.25
HIDDEN = 128
ALPHAS = (1e-2, 1e-1, 1.0)  # the MLP's l2 penalties tried; the best held-out AUROC is kept
# L-BFGS stops here, converged or not: a fixed budget keeps the weights the same in every run.
MLP_ITERATIONS = 500
# The linear head the MLP replaced (l2 of the best held-out AUROC of five), reported beside it.
LINEAR_L2 = 1e-4


def load_benign_requests() -> list[str]:
    """The benign requests written for training (`BENIGN_FILE`)."""
    return _load_written(BENIGN_FILE)


def load_harmful_requests() -> list[str]:
    """The short harmful requests written for training (`HARMFUL_FILE`)."""
    return _load_written(HARMFUL_FILE)


def contrast_parts() -> dict[str, list[str]]:
    """The benign contrast requests (`CONTRAST_FILE`) in two seeded parts: `train` (the gate and the
    response-harm scorer train on it) and `calibration` (nothing trains on it; the veto's floor is
    set on it, so the floor sees risky-sounding benign requests the gate is unsure of)."""
    parts: dict[str, list[str]] = {"train": [], "calibration": []}
    for text in _load_written(CONTRAST_FILE):
        held = redteam.part_of(text, test_fraction=CALIBRATION_FRACTION, seed=SEED) == "test"
        parts["calibration" if held else "train"].append(text)
    return parts


def heldout_harmful() -> list[str]:
    """The harmful requests of the pool's held-out fifth: the shipped head never trained on them."""
    texts, labels, _ = training_pool()
    held = heldout_mask(len(texts), SEED)
    return [text for text, is_held, harmful in zip(texts, held, labels, strict=True) if is_held and harmful]


def _load_written(name: str) -> list[str]:
    path = DATA / name
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
    benign = load_benign_requests() + contrast_parts()["train"]
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


def fit_mlp(features: np.ndarray, labels: np.ndarray, alpha: float, seed: int = SEED) -> dict[str, Any]:
    """One hidden layer of `HIDDEN` ReLU units under a logistic output (scikit-learn's MLP, seeded,
    L-BFGS: the same weights in every run), as the arrays `GuardReward` evaluates with numpy."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier((HIDDEN,), alpha=alpha, solver="lbfgs", max_iter=MLP_ITERATIONS, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the iteration budget is the stopping rule
        model.fit(features, labels)
    (hidden, output), (hidden_bias, output_bias) = model.coefs_, model.intercepts_
    return {
        "hidden_weights": np.round(hidden, 6).tolist(),
        "hidden_bias": np.round(hidden_bias, 6).tolist(),
        "weights": np.round(output[:, 0], 6).tolist(),
        "bias": round(float(output_bias[0]), 6),
    }


def mlp_probability(features: np.ndarray, head: dict[str, Any]) -> np.ndarray:
    """P(harmful) of each row under a head `fit_mlp` wrote (the rounded weights, as shipped),
    by `GuardReward`'s own forward pass."""
    from stars_guard.adapters.guard_reward import TrainedHead

    return TrainedHead.from_weights(head).probability(features)


def train_request_harm(*, seed: int = SEED, exemplar_gate: Any = None) -> dict[str, Any]:
    """Fit the head on the pool minus a held-out fifth, its `alpha` the best held-out AUROC of
    `ALPHAS`; evaluate it, the linear head it replaced (and the exemplar gate, if given) on the test parts."""
    from stars_guard.bench.judge import embed

    texts, labels, categories = training_pool()
    features = embed(texts)
    held = heldout_mask(len(texts), seed)
    fits = {alpha: fit_mlp(features[~held], labels[~held], alpha, seed) for alpha in ALPHAS}
    heldout_auroc = {
        alpha: auroc(list(mlp_probability(features[held], head)), list(labels[held])) for alpha, head in fits.items()
    }
    alpha = max(ALPHAS, key=lambda value: heldout_auroc[value])
    head = fits[alpha]
    centroids = {}
    for category in sorted(set(categories) - {"benign"}):
        rows = features[~held][np.array(categories)[~held] == category]
        centroid = rows.mean(axis=0)
        centroids[category] = [round(float(value), 6) for value in centroid / np.linalg.norm(centroid)]
    test_texts, test_labels = test_prompts()
    test_features = embed(test_texts)
    heldout = mlp_probability(features[held], head)
    linear = fit_logistic(features[~held], labels[~held], LINEAR_L2)
    report: dict[str, Any] = {
        "kind": "mlp",
        "features": "all-MiniLM-L6-v2 normalised sentence embedding of the request",
        "training": "HarmBench and Do-Not-Answer development parts and harmful_requests.jsonl (harmful), "
        "benign_requests.jsonl and the training part of benign_contrast_requests.jsonl (benign)",
        "seed": seed,
        "hidden": HIDDEN,
        "alpha": alpha,
        "heldout_auroc_by_alpha": {str(key): round(value, 4) for key, value in heldout_auroc.items()},
        "train_examples": int((~held).sum()),
        "heldout_examples": int(held.sum()),
        "heldout": {
            "accuracy": round(float(np.mean((heldout > 0.5) == labels[held])), 4),
            "auroc": round(auroc(list(heldout), list(labels[held])), 4),
        },
        "test": _rates(mlp_probability(test_features, head), test_labels),
        "linear_head_test": _rates(logistic(test_features, linear[:-1], linear[-1]), test_labels),
        "test_prompts": {"harmful": int(test_labels.sum()), "benign_lookalikes": int((~test_labels).sum())},
        "category_accuracy_donotanswer_test": round(_category_accuracy(centroids, test_features, test_texts), 4),
    }
    if exemplar_gate is not None:
        exemplar = np.array([exemplar_gate.request_harm(text) for text in test_texts])
        report["exemplar_gate_test"] = _rates(exemplar, test_labels)
    report.update(head)
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


def write_head(path: Path, head: dict[str, Any]) -> None:
    """Write a head file, one line per key: the metrics stay readable above the 49k weights."""
    lines = [f"{json.dumps(key)}: {json.dumps(value)}" for key, value in head.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description="train the request-harm gate")
    commands = parser.add_subparsers(dest="command", required=True)
    training = commands.add_parser("train", help="fit on the development parts and write the head")
    training.add_argument("--out", type=Path, help=f"head file (default: the packaged one, {head_path()})")
    args = parser.parse_args(argv)
    from stars_guard.adapters.guard_reward import GuardReward

    report = train_request_harm(exemplar_gate=GuardReward(harm_gate="exemplars"))
    # A new head has no calibrated floor yet: GuardReward refuses it until
    # benchmarks/calibrate_harm_veto.py --write-floor has calibrated its veto on it.
    report = {"made_by": f"python -m {__name__} train", **report, "veto": None}
    write_head(args.out or head_path(), report)
    arrays = ("hidden_weights", "hidden_bias", "weights", "centroids")
    print(json.dumps({key: value for key, value in report.items() if key not in arrays}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
