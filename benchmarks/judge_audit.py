"""Audit the bench judge's win-rate on benign prompts for a relevance confound.

Reads the `answers.jsonl` a safety run writes (`stars-guard bench --suite benign ...`), pairs a
method's answers with the baseline's by prompt, and reports how the judge's score moves with
each answer's relevance to the request (`stars_guard.bench.judge_audit`), with a scatter plot.

    .venv/bin/python benchmarks/judge_audit.py benchmarks/results/safety-full/answers.jsonl

Writes `judge_audit.json`, `judge_audit.md` and `judge_audit.png` beside the answers (or `--out`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("answers", type=Path, help="answers.jsonl of a safety run")
    parser.add_argument("--suite", default="benign")
    parser.add_argument("--method", default="stars")
    parser.add_argument("--baseline", default="vanilla")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: beside the answers)")
    args = parser.parse_args()

    from stars_guard.bench.judge import BTJudge, embed
    from stars_guard.bench.judge_audit import audit

    rows = [json.loads(line) for line in args.answers.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_method: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        if row["suite"] == args.suite:
            by_method.setdefault(row["method"], {})[row["index"]] = row
    for name in (args.method, args.baseline):
        if name not in by_method:
            raise SystemExit(
                f"no {args.suite!r} answers of method {name!r} in {args.answers}: found {sorted(by_method)}"
            )
    method, baseline = by_method[args.method], by_method[args.baseline]
    indices = sorted(method.keys() & baseline.keys())
    prompts = [method[i]["prompt"] for i in indices]
    print(f"[judge-audit] {len(indices)} paired answers: embedding prompts and answers")
    prompt_vectors = embed(prompts)

    def relevance(answers: dict[int, dict[str, Any]]) -> np.ndarray:
        vectors = embed([answers[i]["answer"] or " " for i in indices])
        return (prompt_vectors * vectors).sum(axis=1)

    relevance_method, relevance_baseline = relevance(method), relevance(baseline)
    judge_method = [method[i]["judge_score"] for i in indices]
    judge_baseline = [baseline[i]["judge_score"] for i in indices]
    result = audit(
        judge_method, judge_baseline, relevance_method, relevance_baseline, BTJudge().score(prompts, prompts)
    )
    result |= {"answers": str(args.answers), "suite": args.suite, "method": args.method, "baseline": args.baseline}

    out = args.out or args.answers.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge_audit.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "judge_audit.md").write_text(markdown(result))
    plot(np.asarray(judge_method) - np.asarray(judge_baseline), relevance_method - relevance_baseline, result, out)
    print((out / "judge_audit.md").read_text())


def markdown(result: dict[str, Any]) -> str:
    from stars_guard.bench.statistics import format_estimate

    def _interval(value: dict[str, float] | None) -> str:
        return format_estimate(value) if value is not None else "-"

    method, baseline = result["method"], result["baseline"]
    lines = [
        f"# Judge audit: {method} against {baseline} on {result['suite']} ({result['prompts']} prompts)",
        "",
        f"From `{result['answers']}`; relevance is the MiniLM cosine of answer and request.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| mean relevance, {method} / {baseline} | {result['relevance_mean']['method']:.3f} / "
        f"{result['relevance_mean']['baseline']:.3f} |",
        f"| correlation of judge score and relevance (all answers) | {result['judge_relevance_correlation']:.3f} |",
        f"| slope: judge gap per unit of relevance gap | {result['slope']:.3f} |",
        f"| judge gap at equal relevance (intercept) | {_interval(result['at_equal_relevance'])} |",
        f"| judge win-rate, all pairs | {_interval(result['win_rate'])} |",
        f"| judge win-rate, pairs within 0.05 relevance ({result['matched_pairs']}) | "
        f"{_interval(result['matched_win_rate'])} |",
        f"| correlation of an answer's judge score with its request's | {result['topic_tracking']:.3f} |",
        "",
        "![judge_audit.png](judge_audit.png)",
        "",
    ]
    return "\n".join(lines)


def plot(judge_gap: np.ndarray, relevance_gap: np.ndarray, result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5))
    wins = judge_gap > 0
    axes.scatter(relevance_gap[wins], judge_gap[wins], s=14, color="tab:green", label=f"{result['method']} wins")
    axes.scatter(relevance_gap[~wins], judge_gap[~wins], s=14, color="tab:red", label=f"{result['method']} loses")
    xs = np.linspace(relevance_gap.min(), relevance_gap.max(), 2)
    line = result["slope"] * xs + result["at_equal_relevance"]["mean"]
    axes.plot(xs, line, color="black", linewidth=1, label=f"fit, slope {result['slope']:.2f}")
    axes.axhline(0, color="grey", linewidth=0.5)
    axes.axvline(0, color="grey", linewidth=0.5)
    axes.set_xlabel(f"relevance gap ({result['method']} - {result['baseline']})")
    axes.set_ylabel("judge score gap")
    axes.set_title(f"Bench judge against relevance, {result['suite']} prompts")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "judge_audit.png", dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
