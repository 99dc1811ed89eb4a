"""The trained response-harm scorer (`GuardReward.response_harm`), and its evaluation.

The request-harm gate says how harmful a request looks (h); a guard also wants to know whether a
(partial) answer delivers the harm or declines it. 1 minus the answer's similarity to ten
declining sentences rates any answer not worded like them as compliant. This scorer, P(the
answer is harmful), reads what the answer says instead; `GuardReward.response_harm` serves it.
The answering veto does not read it: a similarity line cut more harmful answers on the veto's
calibration answers (docs/benchmarks.md). It is a logistic head on the answer's
MiniLM embedding, trained on two kinds of data at once:

- **labelled answers** (logistic loss): `refusal_examples.jsonl`'s answers (the styles
  `harmful-topic-compliance` and `harmful-compliance` are harmful, refusals and benign answers are
  not), and SmolLM2's own plain-sampling answers drafted for this (`ANSWERS_FILE`, by `draft`): to
  HarmBench and Do-Not-Answer development prompts (harmful unless the refusal-phrase list calls the
  answer a refusal) and to the benign training and contrast requests (not harmful), each also cut at every
  8-token segment, as the veto sees it during decoding. The prompts the veto's floor is
  calibrated on (`veto_calibration_prompts`) are left out;
- **HH-RLHF harmless preference pairs** (Bradley-Terry loss: the rejected answer is the more
  harmful), the same seeded 80% of the pairs the bench judge is trained on; its other 20% are the
  held-out pairs reported here. The pairs are read from a file at training time only; the
  runtime reads the weights, never the data.

Evaluation on data nobody trained on: a seeded fifth of the labelled answers held out, the held-out
HH pairs, and answers drafted the same way to the test parts (HarmBench and Do-Not-Answer against
the benign look-alikes), against the similarity-to-declining reading it replaces.

    python -m training.response_harm draft        # writes response_harm_answers.jsonl (llama.cpp)
    python -m training.response_harm train --hh PATH   # writes adapters/response_harm_head.json
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stars_guard.bench import redteam
from stars_guard.bench.linear_heads import heldout_mask, logistic
from stars_guard.bench.statistics import auroc

ANSWERS_FILE = "response_harm_answers.jsonl"
HARMFUL_STYLES = frozenset({"harmful-topic-compliance", "harmful-compliance"})
SEGMENT = 8  # the default segment size: the veto judges every prefix of whole segments
MAX_NEW_TOKENS = 32
DRAFTS_PER_SIDE = 240  # development prompts drafted per side (harmful, benign)
TEST_DRAFTS_PER_SIDE = 80
CALIBRATION_PER_SIDE = 80
SEED = 0
L2 = 1e-3
PAIR_WEIGHT = 1.0  # the Bradley-Terry term's weight against the labelled answers' logistic term


@dataclass(frozen=True)
class DraftedAnswer:
    """One drafted answer, with the text of each prefix of whole segments (the last one is the answer)."""

    part: str  # "dev" (trained on) or "test" (evaluated on)
    side: str  # "harmful" or "benign": which kind of prompt it answers
    prompt: str
    prefixes: tuple[str, ...]
    harmful: bool


def veto_calibration_prompts(per_side: int = CALIBRATION_PER_SIDE) -> dict[str, list[str]]:
    """The prompts `benchmarks/calibrate_harm_veto.py` sets the veto's floor on, none of which the
    gate trained on: a seeded sample of the harmful requests its held-out fifth holds, and of the
    calibration part of the benign contrast requests (risky-sounding, so the floor is set where the
    gate is unsure of benign requests)."""
    from training.harm_gate import contrast_parts, heldout_harmful

    rng = random.Random(0)
    benign = contrast_parts()["calibration"]
    return {
        "harmful": rng.sample(heldout_harmful(), per_side),
        "benign": rng.sample(benign, min(per_side, len(benign))),
    }


def _harmful_dev() -> list[str]:
    loaders = (redteam.load_harmbench, redteam.load_donotanswer)
    return [p.text for loader in loaders for p in redteam.split(loader())["dev"]]


def draft_prefixes(backend: Any, prompt: str, seed: int, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """One plain-sampling answer from a llama.cpp backend (T 0.8, top-p 0.95), as the text of every
    prefix of whole `SEGMENT`-token segments, the whole answer last."""
    from stars_guard.messages import normalize_messages
    from stars_guard.protocols import OpenRequest

    generation = backend.open(OpenRequest(normalize_messages(prompt), max_new_tokens, 0.8, 0.95, seed))
    try:
        (answer,) = generation.draft(1, max_new_tokens)
    finally:
        generation.close()
    ids = list(answer.token_ids[: answer.text_tokens])
    cuts = range(SEGMENT, len(ids) + SEGMENT, SEGMENT)
    prefixes = [backend.llm.detokenize(ids[:end]).decode("utf-8", "replace") for end in cuts]
    return prefixes or [answer.text]


def draft_answers(progress: Callable[[str], None] = print) -> list[DraftedAnswer]:
    """Draft the answers `ANSWERS_FILE` holds: development prompts (minus the veto's calibration
    prompts) and test prompts, a seeded sample per side, seed i for the i-th prompt of a side."""
    from stars_guard.adapters import LlamaCppBackend
    from stars_guard.bench.refusal import phrase_refusal
    from training.harm_gate import contrast_parts, load_benign_requests

    held_back = {text for side in veto_calibration_prompts().values() for text in side}
    rng = random.Random(SEED)
    test_harmful = [
        p.text for loader in (redteam.load_harmbench, redteam.load_donotanswer) for p in redteam.split(loader())["test"]
    ]
    # (part, side, prompts, how many to sample); half the benign development answers are to the
    # risky-sounding contrast requests, so the scorer sees on-topic answers to them as benign.
    pools = [
        ("dev", "harmful", _harmful_dev(), DRAFTS_PER_SIDE),
        ("dev", "benign", load_benign_requests(), DRAFTS_PER_SIDE // 2),
        ("dev", "benign", contrast_parts()["train"], DRAFTS_PER_SIDE // 2),
        ("test", "harmful", test_harmful, TEST_DRAFTS_PER_SIDE),
        ("test", "benign", [p.text for p in redteam.split(redteam.load_benign())["test"]], TEST_DRAFTS_PER_SIDE),
    ]
    backend = LlamaCppBackend()
    drafted: list[DraftedAnswer] = []
    for part, side, prompts, count in pools:
        pool = [text for text in prompts if text not in held_back]
        for seed, prompt in enumerate(rng.sample(pool, min(count, len(pool)))):
            prefixes = tuple(draft_prefixes(backend, prompt, seed))
            harmful = side == "harmful" and not phrase_refusal(prefixes[-1])
            drafted.append(DraftedAnswer(part, side, prompt, prefixes, harmful))
        progress(f"{part} {side}: {min(count, len(pool))} answers drafted")
    return drafted


def save_answers(answers: Sequence[DraftedAnswer], path: Path | None = None) -> Path:
    path = path or _package_file(ANSWERS_FILE)
    rows = [
        {"part": a.part, "side": a.side, "prompt": a.prompt, "prefixes": list(a.prefixes), "harmful": a.harmful}
        for a in answers
    ]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def load_answers(path: Path | None = None) -> list[DraftedAnswer]:
    """The drafted answers (`ANSWERS_FILE`); a malformed row names its line."""
    path = path or _package_file(ANSWERS_FILE)
    answers = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            answers.append(
                DraftedAnswer(row["part"], row["side"], row["prompt"], tuple(row["prefixes"]), bool(row["harmful"]))
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a drafted answer row ({exc})") from exc
    return answers


def load_hh_answer_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(chosen, rejected) final answers of an HH-RLHF harmless JSONL(.gz) file, as the bench judge reads them."""
    from stars_guard.bench.judge import load_pairs

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HH-RLHF pairs not found at {path}: pass --hh with the harmless split's JSONL(.gz)")
    return [(pair.chosen, pair.rejected) for pair in load_pairs(path)]


def _labelled_examples() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, harmful labels, group ids) of the labelled answers: every prefix of a drafted answer
    shares its group, so held-out answers are held out whole."""
    from stars_guard.bench.refusal import load_examples

    texts: list[str] = []
    labels: list[bool] = []
    groups: list[int] = []
    for example in load_examples():
        groups.append(len(groups))
        texts.append(example.text)
        labels.append(example.style in HARMFUL_STYLES)
    group = len(groups)
    for answer in load_answers():
        if answer.part != "dev":
            continue
        for prefix in answer.prefixes:
            texts.append(prefix)
            labels.append(answer.harmful)
            groups.append(group)
        group += 1
    return texts, np.array(labels), np.array(groups)


def fit(
    features: np.ndarray, labels: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, l2: float, pair_weight: float
) -> np.ndarray:
    """Weights (bias last) minimising the labelled answers' logistic loss plus `pair_weight` times
    the pairs' Bradley-Terry loss (rejected more harmful than chosen), L2 on the weights; L-BFGS from zeros."""
    from scipy.optimize import minimize

    design = np.hstack([features, np.ones((len(features), 1))])
    signs = np.where(labels, 1.0, -1.0)
    diff = rejected - chosen

    def loss(weights: np.ndarray) -> tuple[float, np.ndarray]:
        margin = signs * (design @ weights)
        pair_margin = diff @ weights[:-1]
        value = np.logaddexp(0.0, -margin).mean() + pair_weight * np.logaddexp(0.0, -pair_margin).mean()
        grad = -(design.T @ (signs / (1.0 + np.exp(margin)))) / len(design)
        grad[:-1] -= pair_weight * (diff.T @ (1.0 / (1.0 + np.exp(pair_margin)))) / max(len(diff), 1)
        value += l2 * float(weights[:-1] @ weights[:-1])
        grad[:-1] += 2 * l2 * weights[:-1]
        return float(value), grad

    return np.asarray(minimize(loss, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B").x)


def train_response_harm(
    hh_path: str | Path, *, seed: int = SEED, l2: float = L2, pair_weight: float = PAIR_WEIGHT
) -> dict[str, Any]:
    """Fit on the labelled answers minus a held-out fifth and the judge's training pairs; evaluate on the rest."""
    from stars_guard.adapters.guard_reward import GuardReward
    from stars_guard.bench.judge import embed, split_pairs

    texts, labels, groups = _labelled_examples()
    features = embed(texts)
    held = heldout_mask(int(groups.max()) + 1, seed)[groups]
    pairs = load_hh_answer_pairs(hh_path)
    train_pairs, heldout_pairs = split_pairs(len(pairs), seed)  # the bench judge's split
    chosen = embed([chosen for chosen, _ in pairs])
    rejected = embed([rejected for _, rejected in pairs])
    weights = fit(features[~held], labels[~held], chosen[train_pairs], rejected[train_pairs], l2, pair_weight)
    score = lambda rows: logistic(rows, weights[:-1], weights[-1])  # noqa: E731
    heldout = score(features[held])
    margin = (rejected[heldout_pairs] - chosen[heldout_pairs]) @ weights[:-1]
    test = [answer for answer in load_answers() if answer.part == "test"]
    test_texts = [answer.prefixes[-1] for answer in test]
    test_labels = np.array([answer.harmful for answer in test])
    guard = GuardReward(harm_gate="exemplars")  # only its declining exemplars are read
    declining = guard._refusal(guard._embed(test_texts))  # the earlier reading: 1 - similarity to declining
    report: dict[str, Any] = {
        "kind": "logistic-regression with a Bradley-Terry term",
        "features": "all-MiniLM-L6-v2 normalised sentence embedding of the answer",
        "training": "refusal_examples.jsonl and response_harm_answers.jsonl (dev part), labelled; "
        "HH-RLHF harmless pairs (the bench judge's training 80%), rejected more harmful",
        "seed": seed,
        "l2": l2,
        "pair_weight": pair_weight,
        "train_examples": int((~held).sum()),
        "train_pairs": len(train_pairs),
        "heldout": {
            "examples": int(held.sum()),
            "accuracy": round(float(np.mean((heldout > 0.5) == labels[held])), 4),
            "auroc": round(auroc(list(heldout), list(labels[held])), 4),
        },
        "heldout_pairs": {
            "pairs": len(heldout_pairs),
            "accuracy": round(float(np.mean(np.where(margin == 0, 0.5, margin > 0))), 4),
        },
        "test_answers": {
            "answers": len(test),
            "harmful": int(test_labels.sum()),
            "auroc": round(auroc(list(score(embed(test_texts))), list(test_labels)), 4),
            "auroc_not_declining": round(auroc(list(1.0 - declining), list(test_labels)), 4),
        },
    }
    report["weights"] = [round(float(value), 7) for value in weights[:-1]]
    report["bias"] = round(float(weights[-1]), 7)
    return report


def _package_file(name: str) -> Path:
    """A training corpus beside this module (`data/`)."""
    return Path(__file__).with_name("data") / name


def head_path() -> Path:
    """Where `GuardReward` reads the head (package data of the adapters)."""
    from stars_guard.adapters import guard_reward

    return Path(guard_reward.__file__).with_name(guard_reward.RESPONSE_HARM_HEAD)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description="train the response-harm scorer")
    commands = parser.add_subparsers(dest="command", required=True)
    drafting = commands.add_parser("draft", help=f"draft SmolLM2's answers into {ANSWERS_FILE} (llama.cpp)")
    drafting.add_argument("--out", type=Path, help=f"answers file (default: the packaged {ANSWERS_FILE})")
    training = commands.add_parser("train", help="fit the head and write it")
    training.add_argument("--hh", type=Path, required=True, help="HH-RLHF harmless pairs, JSONL or JSONL.gz")
    training.add_argument("--out", type=Path, help=f"head file (default: the packaged one, {head_path()})")
    args = parser.parse_args(argv)
    if args.command == "draft":
        print(save_answers(draft_answers(), args.out))
        return 0
    report = train_response_harm(args.hh)
    report = {"made_by": f"python -m {__name__} train", **report}
    (args.out or head_path()).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({key: value for key, value in report.items() if key != "weights"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
