"""Re-read a bench `report.json` on a slice of its prompts (by seed), e.g. to separate prompts used
while choosing defaults from prompts never looked at:

    python benchmarks/eval/split_report.py benchmarks/eval/judge-100/report.json --from-seed 24

Prints, per method: mean steering reward, tokens sampled as a share of bon-16's (when present),
judge win-rate against vanilla with a bootstrap 95% interval, and the rejection rate.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from stars_guard.bench.statistics import bootstrap_ci, pairwise_outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--from-seed", type=int, default=0, help="first seed (prompt) of the slice")
    parser.add_argument("--to-seed", type=int, help="seed after the last one of the slice (default: all)")
    args = parser.parse_args()

    methods = json.loads(args.report.read_text())["methods"]
    end = args.to_seed if args.to_seed is not None else 1 << 62

    def rows(method: dict) -> list[dict]:
        return [row for row in method["per_prompt"] if args.from_seed <= row["seed"] < end]

    by_name = {method["name"]: rows(method) for method in methods}
    vanilla_judge = np.array([row["judge_score"] for row in by_name["vanilla"]])
    bon_tokens = sum(row["tokens_sampled"] for row in by_name.get("bon-16", [])) or None
    print(f"{len(vanilla_judge)} prompts, seeds {args.from_seed}..{args.from_seed + len(vanilla_judge) - 1}")
    for name, selected in by_name.items():
        rewards = np.array([row["reward"] for row in selected])
        wins = pairwise_outcomes(np.array([row["judge_score"] for row in selected]), vanilla_judge)
        low, high = bootstrap_ci(list(wins), seed=0, resamples=2000)
        tokens = sum(row["tokens_sampled"] for row in selected)
        share = f"{tokens / bon_tokens:6.1%}" if bon_tokens else "   n/a"
        rejection = np.mean([row["rejection_rate"] for row in selected])
        print(
            f"{name:12s} reward {rewards.mean():.4f}  tokens {share} of bon-16's  "
            f"judge vs vanilla {wins.mean():.3f} [{low:.3f}, {high:.3f}]  rejection (per-prompt mean) {rejection:.3f}"
        )


if __name__ == "__main__":
    main()
