"""The Bradley-Terry judge: deterministic training, better than chance on held-out pairs, shipped weights."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from stars_guard.bench import judge
from tests.shared_data import SHARED_HH

PAIRS = 500  # embedding costs about 0.1 s per pair on 2 busy cores


@pytest.fixture(scope="module")
def pair_features() -> judge.PairFeatures:
    if not SHARED_HH.is_file():
        pytest.skip(f"shared HH data not found at {SHARED_HH}")
    return judge.PairFeatures.from_pairs(judge.load_pairs(SHARED_HH, PAIRS))


def test_training_is_deterministic_under_a_seed(pair_features: judge.PairFeatures) -> None:
    first, again = judge.train(pair_features, seed=0), judge.train(pair_features, seed=0)
    np.testing.assert_array_equal(first.weights, again.weights)
    assert first.heldout_accuracy == again.heldout_accuracy
    other = judge.train(pair_features, seed=1)
    assert not np.array_equal(first.weights, other.weights)  # another seed, another split


def test_held_out_pairs_ranked_better_than_chance(pair_features: judge.PairFeatures) -> None:
    result = judge.train(pair_features, seed=0)
    assert (result.train_pairs, result.heldout_pairs) == (400, 100)
    # 100 held-out pairs: chance is 0.50 with a standard error of 0.05; require two of them.
    assert result.heldout_accuracy >= 0.60
    assert result.train_accuracy >= result.heldout_accuracy - 0.1


def test_pairs_parse_the_last_turns(tmp_path: Path) -> None:
    rows = [
        {
            "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: kindly",
            "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: rudely",
        },
        {"chosen": "\n\nHuman: same\n\nAssistant: x", "rejected": "\n\nHuman: same\n\nAssistant: x"},
    ]
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(json.dumps(row) for row in rows) + "\n")
    assert judge.load_pairs(path) == [judge.PreferencePair("how?", "kindly", "rudely")]


@pytest.mark.integration
def test_shipped_weights_load_and_score() -> None:
    shipped = judge.BTJudge()
    assert shipped.source == judge.shipped_weights_path()
    assert shipped.weights.shape == (384,)
    assert shipped.meta["heldout_accuracy"] > 0.55 and shipped.meta["heldout_pairs"] >= 400
    scores = shipped.score(["q", "q"], ["I am happy to help with that.", "I am happy to help with that."])
    assert scores[0] == scores[1]
