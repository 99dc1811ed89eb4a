"""Calibrate GuardReward's veto floor on the HH-RLHF harmless test split.

The veto reads GuardReward's `safety` component (1 - P(offensive) of the partial answer). For each
candidate floor this reports the share of the dataset's `chosen` answers the veto would cut (the
cost: benign-ish answers lost) and the share of its `rejected` answers it would cut (the catch),
on whole answers and on their first words (the veto judges partial answers, segment by segment).
The floor chosen is the highest on the grid that cuts at most `--max-chosen-veto` of the chosen
answers, whole or partial.

    .venv/bin/python benchmarks/calibrate_veto.py --data PATH/hh-rlhf-harmless-test.jsonl.gz

(`--data`: the `harmless-base/test.jsonl.gz` split of the public anthropics/hh-rlhf repository.)

Writes `calibrate_veto.json` and `calibrate_veto.png` under `--out`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from stars_guard.bench.judge import load_pairs

GRID = tuple(round(0.05 * step, 2) for step in range(1, 20))
PREFIX_WORDS = 12  # about a segment or two of tokens: what the veto sees early in an answer


def prefix(text: str, words: int = PREFIX_WORDS) -> str:
    return " ".join(text.split()[:words])


def veto_shares(safety: np.ndarray, floor: float) -> float:
    return float((safety < floor).mean()) if len(safety) else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="HH-RLHF harmless-base test split (JSONL, gzipped or not)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--max-chosen-veto", type=float, default=0.02, help="largest share of chosen answers cut")
    args = parser.parse_args()

    from stars_guard.adapters import GuardReward

    pairs = load_pairs(args.data)
    guard = GuardReward()
    print(f"scoring {len(pairs)} preference pairs (whole answers and their first {PREFIX_WORDS} words)")
    safety = {
        "chosen": guard.safety([pair.chosen for pair in pairs]),
        "rejected": guard.safety([pair.rejected for pair in pairs]),
        "chosen_prefix": guard.safety([prefix(pair.chosen) for pair in pairs]),
        "rejected_prefix": guard.safety([prefix(pair.rejected) for pair in pairs]),
    }
    rows = [
        {
            "floor": floor,
            **{f"vetoed_{name}": round(veto_shares(values, floor), 4) for name, values in safety.items()},
        }
        for floor in GRID
    ]
    eligible = [
        row["floor"] for row in rows if max(row["vetoed_chosen"], row["vetoed_chosen_prefix"]) <= args.max_chosen_veto
    ]
    chosen_floor = max(eligible) if eligible else None
    report = {
        "data": str(args.data),
        "pairs": len(pairs),
        "rule": f"highest floor cutting at most {args.max_chosen_veto:.0%} of chosen answers, whole or partial",
        "floor": chosen_floor,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibrate_veto.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'floor':>6} {'chosen':>8} {'rejected':>9} {'chosen@12w':>11} {'rejected@12w':>13}")
    for row in rows:
        print(
            f"{row['floor']:>6.2f} {row['vetoed_chosen']:>8.1%} {row['vetoed_rejected']:>9.1%} "
            f"{row['vetoed_chosen_prefix']:>11.1%} {row['vetoed_rejected_prefix']:>13.1%}"
        )
    print(f"chosen floor: {chosen_floor} ({report['rule']})")
    plot(safety, chosen_floor, args.out / "calibrate_veto.png")


def plot(safety: dict[str, np.ndarray], floor: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0.0, 1.0, 41)
    axis.hist(safety["chosen"], bins=bins, alpha=0.6, label="chosen answers", density=True)
    axis.hist(safety["rejected"], bins=bins, alpha=0.6, label="rejected answers", density=True)
    if floor is not None:
        axis.axvline(floor, color="black", linestyle="--", label=f"veto floor {floor:g}")
    axis.set_yscale("log")
    axis.set_xlabel("GuardReward safety = 1 - P(offensive)")
    axis.set_ylabel("density (log)")
    axis.set_title("HH harmless test split: safety of final answers")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
