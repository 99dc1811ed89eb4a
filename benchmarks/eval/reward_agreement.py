"""How well choosing by the steering reward also chooses what the independent judge prefers.

Reads the drafts cache `sweep.py` writes (vanilla's answer and BoN-16's 16 drafts per prompt), so
no text is generated. Per reward, over a slice of prompts:
- the mean Spearman correlation of reward and judge score over each prompt's 16 drafts;
- the judge win-rate over vanilla of the reward's pick among the 16 drafts, and among 4 (the mean
  over the four disjoint groups of 4 drafts).

    OMP_NUM_THREADS=1 python benchmarks/eval/reward_agreement.py /tmp/stars-sweep/drafts-48-64.json \
        --from-prompt 24 --to-prompt 48
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from stars_guard.bench.judge import BTJudge
from stars_guard.bench.statistics import pairwise_outcomes


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties broken by position: the judge and reward scores are continuous)."""
    rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def rewards() -> dict[str, Any]:
    from stars_guard.adapters.guard_reward import GuardReward

    return {"guard (refusal-aware, shipped)": GuardReward(), "guard-relevance": GuardReward(refusal_aware=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path, help="drafts-N-T.json written by benchmarks/eval/sweep.py")
    parser.add_argument("--from-prompt", type=int, default=0)
    parser.add_argument("--to-prompt", type=int, help="index after the last prompt (default: all)")
    args = parser.parse_args()

    data = json.loads(args.cache.read_text())
    indices = range(args.from_prompt, args.to_prompt if args.to_prompt is not None else len(data["prompts"]))
    judge = BTJudge()
    judged = []
    for index in indices:
        prompt, drafts = data["prompts"][index], [draft["text"] for draft in data["bon16"][index]]
        draft_scores = np.asarray(judge.score([prompt] * len(drafts), drafts))
        vanilla_score = float(judge.score([prompt], [data["vanilla"][index]["text"]])[0])
        judged.append((prompt, drafts, draft_scores, vanilla_score))
    print(f"prompts {indices.start}..{indices.stop - 1} of {args.cache.name}")
    for name, reward in rewards().items():
        correlations, best_of_16, best_of_4 = [], [], []
        for prompt, drafts, draft_scores, vanilla_score in judged:
            scores = np.asarray(reward.score(prompt, drafts))
            correlations.append(spearman(scores, draft_scores))
            best_of_16.append(float(pairwise_outcomes([draft_scores[int(np.argmax(scores))]], [vanilla_score])[0]))
            picks = [start + int(np.argmax(scores[start : start + 4])) for start in range(0, len(drafts), 4)]
            best_of_4.append(float(pairwise_outcomes(draft_scores[picks], [vanilla_score] * len(picks)).mean()))
        print(
            f"{name:32s} Spearman(reward, judge) {np.mean(correlations):+.3f}  "
            f"judge win of best-of-16 {np.mean(best_of_16):.3f}  of best-of-4 {np.mean(best_of_4):.3f}"
        )


if __name__ == "__main__":
    main()
