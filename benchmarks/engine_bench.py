"""Engine benchmark: vanilla sampling vs STARS on the same backend, model, prompts and seeds.

Measures, in one run: wall time (and its ratio per emitted token), tokens_sampled / tokens_emitted,
llm_forward_tokens / (prompt_tokens + tokens_sampled) (1.0 = nothing recomputed), rejection rate,
mean final GuardReward, and the peak RSS and wall time of a fresh `stars-guard chat` process.

    python benchmarks/engine_bench.py --out benchmarks/results            # 8 prompts, 128 new tokens
    python benchmarks/engine_bench.py --quick --out /tmp/bench            # 3 prompts, 64 new tokens
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load_prompts(count: int) -> list[str]:
    """Red-team prompts from the shared HH data when present, else the harness's built-in set."""
    from stars_guard.bench.harness import load_prompts as harness_prompts

    return harness_prompts(None, count)[0]


def run_method(engine: Any, prompts: list[str], progress: Any) -> list[dict[str, Any]]:
    rows = []
    for seed, prompt in enumerate(prompts):
        started = time.perf_counter()
        result = engine.run(prompt, seed=seed)
        wall = time.perf_counter() - started
        stats = result.stats.as_dict()
        rows.append({"seed": seed, "wall_s": wall, "text": result.text, **stats})
        progress.update()
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    def total(key: str) -> float:
        return float(sum(row[key] for row in rows))

    return {
        "wall_s": total("wall_s"),
        "tokens_emitted": total("tokens_emitted"),
        "tokens_sampled": total("tokens_sampled"),
        "prompt_tokens": total("prompt_tokens"),
        "llm_forward_tokens": total("llm_forward_tokens"),
        "llm_calls": total("llm_calls"),
        "reward_calls": total("reward_calls"),
        "seconds_per_emitted_token": total("wall_s") / max(total("tokens_emitted"), 1),
        "sampled_per_emitted": total("tokens_sampled") / max(total("tokens_emitted"), 1),
        "forward_ratio": total("llm_forward_tokens") / (total("prompt_tokens") + total("tokens_sampled")),
        "rejection_rate": total("candidates_rejected") / max(total("candidates_sampled"), 1),
        "mean_final_reward": statistics.mean(row["final_reward"] or 0.0 for row in rows),
    }


def measure_cli(max_new_tokens: int) -> dict[str, float]:
    """Peak RSS and wall time of one fresh `stars-guard chat` process (model load included)."""
    command = [
        sys.executable,
        "-m",
        "stars_guard.cli",
        "chat",
        "How do I keep my houseplants alive while I am on holiday?",
        "--seed",
        "7",
        "--max-new-tokens",
        str(max_new_tokens),
        "--json",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"cli_wall_s": wall, "cli_peak_rss_gb": peak_kib * 1024 / 1e9}


def plot(report: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vanilla, stars = report["per_prompt"]["vanilla"], report["per_prompt"]["stars"]
    seeds = [row["seed"] for row in vanilla]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.4
    left.bar([s - width / 2 for s in seeds], [r["wall_s"] for r in vanilla], width, label="vanilla")
    left.bar([s + width / 2 for s in seeds], [r["wall_s"] for r in stars], width, label="STARS (K=4, L=16)")
    left.set_xlabel("prompt")
    left.set_ylabel("wall seconds")
    left.set_title("Wall time per prompt")
    left.legend()
    right.bar([s - width / 2 for s in seeds], [r["final_reward"] or 0 for r in vanilla], width, label="vanilla")
    right.bar([s + width / 2 for s in seeds], [r["final_reward"] or 0 for r in stars], width, label="STARS")
    right.set_xlabel("prompt")
    right.set_ylabel("final GuardReward")
    right.set_title("Reward of the final answer")
    right.set_ylim(0, 1)
    fig.tight_layout()
    path = out / "engine_bench.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(report: dict[str, Any]) -> str:
    v, s = report["summary"]["vanilla"], report["summary"]["stars"]
    lines = [
        f"Prompts: {report['config']['prompts']}, max_new_tokens: {report['config']['max_new_tokens']}, "
        f"machine: {report['config']['machine']}",
        "",
        "| metric | vanilla | STARS | STARS / vanilla |",
        "|---|---|---|---|",
    ]
    for key in (
        "wall_s",
        "seconds_per_emitted_token",
        "tokens_emitted",
        "tokens_sampled",
        "sampled_per_emitted",
        "forward_ratio",
        "llm_calls",
        "reward_calls",
        "rejection_rate",
        "mean_final_reward",
    ):
        ratio = s[key] / v[key] if v[key] else float("nan")
        lines.append(f"| {key} | {v[key]:.4g} | {s[key]:.4g} | {ratio:.3g} |")
    cli = report["cli"]
    lines += [
        "",
        f"`stars-guard chat` (fresh process, model load included, {report['config']['max_new_tokens']} new tokens): "
        f"{cli['cli_wall_s']:.1f} s wall, peak RSS {cli['cli_peak_rss_gb']:.2f} GB",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="3 prompts, 64 new tokens")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.max_new_tokens = 3, 64
    args.out.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    from stars_guard import STARSConfig, STARSEngine
    from stars_guard.adapters import GuardReward, TransformersBackend

    backend, reward = TransformersBackend(), GuardReward()
    prompts = load_prompts(args.prompts)
    engines = {
        "vanilla": STARSEngine(backend, reward, STARSConfig.plain_sampling(args.max_new_tokens)),
        "stars": STARSEngine(backend, reward, STARSConfig(max_new_tokens=args.max_new_tokens)),
    }
    engines["stars"].run("Warm up.", seed=0, max_new_tokens=16)  # first-call allocations off the clock
    per_prompt: dict[str, list[dict[str, Any]]] = {}
    with tqdm(total=2 * len(prompts), desc="engine bench", file=sys.stderr) as progress:
        for name, engine in engines.items():
            per_prompt[name] = run_method(engine, prompts, progress)
    report = {
        "config": {
            "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens,
            "stars": engines["stars"].config.model_dump(),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads "
            f"{__import__('torch').get_num_threads()}",
        },
        "summary": {name: summarise(rows) for name, rows in per_prompt.items()},
        "per_prompt": per_prompt,
        "cli": measure_cli(args.max_new_tokens),
    }
    v, s = report["summary"]["vanilla"], report["summary"]["stars"]
    report["ratios"] = {
        "wall_time": s["wall_s"] / v["wall_s"],
        "wall_time_per_emitted_token": s["seconds_per_emitted_token"] / v["seconds_per_emitted_token"],
        "stars_forward_ratio": s["forward_ratio"],
        "stars_sampled_per_emitted": s["sampled_per_emitted"],
        "stars_rejection_rate": s["rejection_rate"],
    }
    (args.out / "engine_bench.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / "engine_bench.md").write_text(table + "\n")
    plot(report, args.out)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
