"""report.json (validated against `report.schema.json`), report.md and the PNG plots."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from stars_guard.bench.methods import Method, Outcome
from stars_guard.bench.statistics import bootstrap_ci, pairwise_outcomes

SCHEMA_FILE = "report.schema.json"
TOKEN_TARGET_SHARE = 0.25  # the issue's target: BoN-16's reward with at most 25% of its tokens sampled
REJECTION_TARGET = (0.10, 0.60)
QUICK_WALL_TARGET_S = 300.0


def schema() -> dict[str, Any]:
    """The JSON schema report.json follows (shipped in the package)."""
    return json.loads(resources.files("stars_guard.bench").joinpath(SCHEMA_FILE).read_text())


def validate(report: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` when `report` does not follow the schema."""
    import jsonschema

    jsonschema.validate(report, schema())


def _interval(values: list[float], seed: int, resamples: int) -> list[float]:
    low, high = bootstrap_ci(values, seed=seed, resamples=resamples)
    return [round(low, 6), round(high, 6)]


def _win(judged: dict[str, list[float]], name: str, baseline: str, seed: int, resamples: int) -> tuple[Any, Any]:
    if baseline not in judged:
        return None, None
    outcomes = pairwise_outcomes(judged[name], judged[baseline])
    return round(float(outcomes.mean()), 6), _interval(list(outcomes), seed, resamples)


def build_report(
    *,
    options: Any,
    prompts: list[str],
    prompt_source: str,
    seeds: list[int],
    methods: list[Method],
    outcomes: dict[str, list[Outcome]],
    rewards: dict[str, list[float]],
    judged: dict[str, list[float]],
    peak_rss_mb: dict[str, float],
    judge: dict[str, Any],
    backend_name: str,
    reward_name: str,
    machine: str,
    total_wall_s: float,
) -> dict[str, Any]:
    """The whole report as plain JSON data (see report.schema.json for each field)."""
    resamples, seed = options.bootstrap_resamples, options.seed
    rows = []
    for method in methods:
        runs = outcomes[method.name]
        stats = [run.stats for run in runs]
        refused = [1.0 if item.refused else 0.0 for item in stats]
        forward = [item.llm_forward_tokens for item in stats]
        sampled = sum(item.candidates_sampled for item in stats)
        rejected = sum(item.candidates_rejected for item in stats)
        win_vanilla, win_vanilla_ci = _win(judged, method.name, "vanilla", seed, resamples)
        win_bon16, win_bon16_ci = _win(judged, method.name, "bon-16", seed, resamples)
        rows.append(
            {
                **method.describe(),
                "mean_reward": round(float(np.mean(rewards[method.name])), 6),
                "mean_reward_ci": _interval(rewards[method.name], seed, resamples),
                "mean_judge_score": round(float(np.mean(judged[method.name])), 6),
                "judge_win_rate_vs_vanilla": win_vanilla,
                "judge_win_rate_vs_vanilla_ci": win_vanilla_ci,
                "judge_win_rate_vs_bon16": win_bon16,
                "judge_win_rate_vs_bon16_ci": win_bon16_ci,
                "refusal_rate": round(float(np.mean(refused)), 6),
                "refusal_rate_ci": _interval(refused, seed, resamples),
                "rejection_rate": round(rejected / sampled, 6) if sampled else 0.0,
                "candidates_vetoed": sum(item.candidates_vetoed for item in stats),
                "tokens_sampled": sum(item.tokens_sampled for item in stats),
                "tokens_emitted": sum(item.tokens_emitted for item in stats),
                "llm_calls": sum(item.llm_calls for item in stats),
                "reward_calls": sum(item.reward_calls for item in stats),
                "llm_forward_tokens": None if any(value is None for value in forward) else sum(forward),  # type: ignore[misc]
                "wall_s": round(sum(run.wall_s for run in runs), 3),
                "peak_rss_mb": round(peak_rss_mb[method.name], 1),
                "per_prompt": [
                    {
                        "seed": seeds[index],
                        "reward": round(rewards[method.name][index], 6),
                        "judge_score": round(judged[method.name][index], 6),
                        "refused": run.stats.refused,
                        "tokens_sampled": run.stats.tokens_sampled,
                        "tokens_emitted": run.stats.tokens_emitted,
                        "rejection_rate": round(run.stats.rejection_rate, 6),
                        "wall_s": round(run.wall_s, 3),
                        "text": run.text,
                    }
                    for index, run in enumerate(runs)
                ],
            }
        )
    report = {
        "config": {
            "prompts": len(prompts),
            "prompt_source": prompt_source,
            "prompt_texts": prompts,
            "seeds": seeds,
            "max_new_tokens": options.max_new_tokens,
            "methods": [method.name for method in methods],
            "backend": backend_name,
            "reward": reward_name,
            "quick": bool(options.quick),
            "bootstrap_resamples": resamples,
            "judge": judge,
            "machine": machine,
            "total_wall_s": round(total_wall_s, 2),
        },
        "methods": rows,
    }
    report["targets"] = targets(report)
    validate(report)
    return report


def _method(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((row for row in report["methods"] if row["name"] == name), None)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value and whether this run meets it (None: not measured)."""
    stars, bon16 = _method(report, "stars"), _method(report, "bon-16")
    checks: list[dict[str, Any]] = []
    if stars and bon16:
        share = stars["tokens_sampled"] / bon16["tokens_sampled"] if bon16["tokens_sampled"] else math.inf
        checks.append(
            {
                "target": "stars reaches bon-16's mean steering reward with <= 25% of its tokens sampled",
                "measured": f"stars {stars['mean_reward']:.4f} vs bon-16 {bon16['mean_reward']:.4f}; "
                f"tokens sampled {share:.1%} of bon-16's",
                "met": bool(stars["mean_reward"] >= bon16["mean_reward"] and share <= TOKEN_TARGET_SHARE),
            }
        )
    if stars and stars["judge_win_rate_vs_vanilla"] is not None:
        low, high = stars["judge_win_rate_vs_vanilla_ci"]
        checks.append(
            {
                "target": "stars beats vanilla on judge win-rate with the 95% interval above 50%",
                "measured": f"{stars['judge_win_rate_vs_vanilla']:.3f} [{low:.3f}, {high:.3f}]",
                "met": bool(low > 0.5),
            }
        )
    if stars:
        low, high = REJECTION_TARGET
        checks.append(
            {
                "target": f"stars rejection rate between {low:.0%} and {high:.0%} with reward "
                f"{report['config']['reward']!r}",
                "measured": f"{stars['rejection_rate']:.3f}",
                "met": bool(low <= stars["rejection_rate"] <= high),
            }
        )
    if report["config"]["quick"]:
        wall = report["config"]["total_wall_s"]
        checks.append(
            {
                "target": "bench --quick finishes in under 5 minutes",
                "measured": f"{wall:.1f} s (model loading included, process start excluded)",
                "met": bool(wall < QUICK_WALL_TARGET_S),
            }
        )
    return checks


def write_outputs(report: dict[str, Any], out: Path, *, plots: bool = True) -> list[Path]:
    """report.json, report.md and (with `plots`) the two PNGs; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    written[0].write_text(json.dumps(report, indent=2) + "\n")
    images = plot(report, out) if plots else []
    written[1].write_text(markdown(report, [path.name for path in images]))
    return written + images


def _fmt_ci(value: float | None, interval: list[float] | None, digits: int = 3) -> str:
    if value is None or interval is None:
        return "-"
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def markdown(report: dict[str, Any], images: list[str]) -> str:
    """Two tables (quality, cost), the targets, and the plots."""
    config = report["config"]
    count = config["prompts"]
    lines = [
        "# stars-guard bench report",
        "",
        f"{count} prompts from `{config['prompt_source']}`, max_new_tokens {config['max_new_tokens']}, "
        f"backend `{config['backend']}`, steering reward `{config['reward']}`, seeds {config['seeds'][0]}.."
        f"{config['seeds'][-1]} (one per prompt, the same for every method). Machine: {config['machine']}. "
        f"Total wall time {config['total_wall_s']:.0f} s.",
        "",
        f"Judge: linear Bradley-Terry head on MiniLM answer embeddings, held-out pairwise accuracy "
        f"{config['judge'].get('heldout_accuracy', float('nan')):.1%} on {config['judge'].get('heldout_pairs')} "
        "HH-RLHF harmless pairs (chance 50%). Intervals: bootstrap 95% over prompts. Win-rates count ties half.",
        "",
        "## Quality",
        "",
        "| method | mean steering reward | judge win-rate vs vanilla | judge win-rate vs bon-16 | refusal rate "
        "| rejection rate | candidates vetoed |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["methods"]:
        lines.append(
            f"| {row['name']} | {_fmt_ci(row['mean_reward'], row['mean_reward_ci'])} "
            f"| {_fmt_ci(row['judge_win_rate_vs_vanilla'], row['judge_win_rate_vs_vanilla_ci'], 2)} "
            f"| {_fmt_ci(row['judge_win_rate_vs_bon16'], row['judge_win_rate_vs_bon16_ci'], 2)} "
            f"| {_fmt_ci(row['refusal_rate'], row['refusal_rate_ci'], 2)} | {row['rejection_rate']:.2f} "
            f"| {row['candidates_vetoed']} |"
        )
    lines += [
        "",
        f"## Cost (totals over {count} prompts)",
        "",
        "| method | tokens sampled | tokens emitted | LLM calls | reward calls | llm_forward_tokens | wall s "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["methods"]:
        forward = "-" if row["llm_forward_tokens"] is None else str(row["llm_forward_tokens"])
        lines.append(
            f"| {row['name']} | {row['tokens_sampled']} | {row['tokens_emitted']} | {row['llm_calls']} "
            f"| {row['reward_calls']} | {forward} | {row['wall_s']:.1f} | {row['peak_rss_mb']:.0f} |"
        )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for check in report["targets"]:
        lines.append(f"| {check['target']} | {check['measured']} | {'yes' if check['met'] else 'no'} |")
    if images:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in images]
    return "\n".join(lines) + "\n"


def _families(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Curves of the reward/cost plot: BoN as N grows, and each STARS sweep through the default."""
    rows = report["methods"]
    curves: dict[str, list[dict[str, Any]]] = {}
    default = _method(report, "stars")
    for row in rows:
        if row["family"] == "stars" and row["sweep"]:
            for key in row["sweep"]:
                curves.setdefault(f"stars: {key}", [default] if default else []).append(row)
        elif row["family"] == "stars":
            continue
        else:
            curves.setdefault(row["family"], []).append(row)
    if default and not any(label.startswith("stars") for label in curves):
        curves["stars"] = [default]
    return {label: sorted(points, key=lambda row: row["tokens_sampled"]) for label, points in curves.items()}


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    """reward_vs_tokens.png and judge_win_rate.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = report["config"]["prompts"]
    fig, axis = plt.subplots(figsize=(8, 5))
    for label, points in _families(report).items():
        xs = [row["tokens_sampled"] / count for row in points]
        ys = [row["mean_reward"] for row in points]
        axis.plot(xs, ys, marker="o", label=label)
        for row, x, y in zip(points, xs, ys, strict=True):
            axis.annotate(row["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axis.set_xscale("log")
    axis.set_xlabel("tokens sampled per prompt (log scale)")
    axis.set_ylabel("mean steering reward of the final answer")
    axis.set_title(f"Reward against cost ({count} prompts, {report['config']['max_new_tokens']} new tokens)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    reward_path = out / "reward_vs_tokens.png"
    fig.savefig(reward_path, dpi=110)
    plt.close(fig)

    rows = [row for row in report["methods"] if row["judge_win_rate_vs_vanilla"] is not None]
    fig, axis = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4.5))
    positions = np.arange(len(rows))
    for offset, key, label in ((-0.2, "vanilla", "vs vanilla"), (0.2, "bon16", "vs bon-16")):
        values = [row[f"judge_win_rate_vs_{key}"] for row in rows]
        if any(value is None for value in values):
            continue
        intervals = [row[f"judge_win_rate_vs_{key}_ci"] for row in rows]
        errors = np.array([[value - low, high - value] for value, (low, high) in zip(values, intervals, strict=True)])
        axis.bar(positions + offset, values, 0.4, yerr=errors.T, capsize=3, label=label)
    axis.axhline(0.5, color="grey", linewidth=1, linestyle="--")
    axis.set_xticks(positions, [row["name"] for row in rows], rotation=45, ha="right")
    axis.set_ylim(0, 1)
    axis.set_ylabel("judge win-rate (ties half), 95% CI")
    axis.set_title("Independent judge: win-rate per method")
    axis.legend(fontsize=8)
    fig.tight_layout()
    judge_path = out / "judge_win_rate.png"
    fig.savefig(judge_path, dpi=110)
    plt.close(fig)
    return [reward_path, judge_path]
