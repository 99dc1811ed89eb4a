"""Calibrate the veto floor for `GuardReward(harm_gate="trained")` on development data only.

With the trained gate the `safety` component the veto reads is min(1 - P(offensive), 1 - h * a)
(a: 1 where the answer does not decline, 0 where it does, `GuardReward.answering_harm`). This
drafts plain-sampling answers (the embedded SmolLM2 on llama.cpp) to prompts the gate never
trained on: harmful ones
(from the held-out fifth of its training pool) and benign ones (the calibration part of
`benign_contrast_requests.jsonl`, risky-sounding requests held out of every training set; the
benign look-alikes stay out), and reports, for each candidate floor on the raw term, the share of
answers the veto would cut on each side, judging each answer as the veto does: every prefix of
whole segments (8 tokens) until the answer ends. Declining answers (the engine's refusal and the
reward's declining exemplars) must never be cut. The floor chosen (the highest that cuts at most
`--max-benign-veto` of the benign answers) is the head's own floor: with `--write-floor` it is
written into the request-harm head (`adapters/request_harm_head.json`, key `veto`), beside what it
was calibrated on, and `GuardReward` reads it from there (a head without one is refused).

    .venv/bin/python benchmarks/calibrate_harm_veto.py --out benchmarks/results --write-floor

Writes `calibrate_harm_veto.json` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# The trainers it reads (`training/`) are a folder of the checkout, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
GRID = tuple(round(0.01 * step, 2) for step in range(1, 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--per-side", type=int, default=80, help="prompts per side (harmful, benign)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-benign-veto", type=float, default=0.05, help="largest share of benign answers cut")
    parser.add_argument("--write-floor", action="store_true", help="write the chosen floor into the request-harm head")
    args = parser.parse_args()

    from unittest import mock

    from stars_guard.adapters import GuardReward, LlamaCppBackend, guard_reward
    from stars_guard.adapters.guard_reward import REFUSALS
    from stars_guard.config import DEFAULT_REFUSAL
    from training.response_harm import draft_prefixes, veto_calibration_prompts

    sides = veto_calibration_prompts(args.per_side)
    backend = LlamaCppBackend()
    # A freshly trained head records no floor yet, and GuardReward refuses such a head: this script
    # is what sets the floor, and it reads `answering_harm` only, never a floor.
    with mock.patch.object(guard_reward, "_calibrated_floor", lambda head: 0.5):
        guard = GuardReward(harm_gate="trained")

    def raw_safety(prompt: str, answers: list[str]) -> float:
        """The lowest unscaled safety of the answers: min(1 - P(offensive), 1 - answering harm)."""
        return float(np.minimum(guard.safety(answers), 1.0 - guard.answering_harm(prompt, answers)).min())

    lowest: dict[str, list[float]] = {}
    for side, prompts in sides.items():
        values = []
        for index, prompt in enumerate(prompts):
            values.append(raw_safety(prompt, draft_prefixes(backend, prompt, index, args.max_new_tokens)))
        lowest[side] = values
        print(f"{side}: {len(values)} answers drafted and judged")
    declining = [DEFAULT_REFUSAL, *REFUSALS]
    refusal_safety = [raw_safety(prompt, declining) for prompt in sides["harmful"]]
    rows = []
    for floor in GRID:
        rows.append(
            {
                "floor": floor,
                "harmful_cut": round(float(np.mean(np.array(lowest["harmful"]) < floor)), 4),
                "benign_cut": round(float(np.mean(np.array(lowest["benign"]) < floor)), 4),
                "declining_cut": round(float(np.mean(np.array(refusal_safety) < floor)), 4),
            }
        )
    allowed = [row for row in rows if row["benign_cut"] <= args.max_benign_veto and row["declining_cut"] == 0]
    chosen = max(allowed, key=lambda row: row["floor"]) if allowed else None
    for row in rows:
        print(row)
    print("chosen:", chosen)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"per_side": args.per_side, "max_new_tokens": args.max_new_tokens, "rows": rows, "chosen": chosen}
    (args.out / "calibrate_harm_veto.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.write_floor:
        if chosen is None:
            raise SystemExit("no floor cuts at most --max-benign-veto of the benign answers: nothing written")
        write_floor(chosen, args)


def write_floor(chosen: dict[str, float], args: argparse.Namespace) -> None:
    """Record the chosen floor in the request-harm head, with what it was calibrated on."""
    from training.harm_gate import head_path, write_head

    path = head_path()
    head = json.loads(path.read_text())
    head["veto"] = veto_record(chosen, args.per_side, args.max_new_tokens, args.max_benign_veto)
    write_head(path, head)
    print(f"wrote floor {chosen['floor']} into {path}")


def veto_record(chosen: dict[str, float], per_side: int, max_new_tokens: int, max_benign_veto: float) -> dict:
    """The head's `veto` entry: the component, its floor, and how the floor was chosen."""
    return {
        "component": "answering",
        "floor": chosen["floor"],
        "chosen_by": (
            f"the highest floor that cut at most {max_benign_veto} of {per_side} benign calibration answers and no "
            f"declining answer, on plain-sampling answers of up to {max_new_tokens} tokens judged per 8-token prefix"
        ),
        "measured": {key: chosen[key] for key in ("harmful_cut", "benign_cut", "declining_cut")},
        "command": "python benchmarks/calibrate_harm_veto.py --write-floor",
    }


if __name__ == "__main__":
    main()
