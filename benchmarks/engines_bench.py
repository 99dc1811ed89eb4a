"""STARS on real serving engines: vanilla sampling vs the default STARS config, through the same adapter.

Starts each engine on 127.0.0.1 with the launch line the tests use (`stars_guard.engines`):
llama.cpp's `llama-server` (the pulled SmolLM2 F16 GGUF, `llama-server:` backend) and vLLM's CPU
build (the pulled SmolLM2 directory in bf16, `openai:` backend in token-id mode). On each, the
same prompts run twice per prompt, in alternation so background load hits both alike: vanilla
(`STARSConfig.plain_sampling`: one request for the whole answer) and STARS at its default config,
both scored by the offline GuardReward, seed *i* for prompt *i*.

Reports per engine: seconds per emitted token and its STARS / vanilla ratio, the forward-token
ratio `llm_forward_tokens / (prompt_tokens + tokens_sampled)` (the engine's own counts: 1.0 means
nothing was computed twice), tokens sampled per token emitted, LLM calls, the reward's share of
the wall time, the engine's idle share (the wall time with no drafting request in flight: the
reward, the client's own work, the HTTP round trips' ends), and mean final reward. Writes
`engines_bench.json`, `engines_bench.md` and `engines_bench.png` into --out.

    python benchmarks/engines_bench.py --out benchmarks/results        # 8 prompts, 128 new tokens
    python benchmarks/engines_bench.py --quick --out /tmp/engines      # 2 prompts, 32 new tokens

Needs `python -m stars_guard.engines provision` (make test runs it) and `stars-guard models pull`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("llama-server", "vllm")
# The tests' slot count. The final segment's 6 candidates then take two requests; 8 slots measured
# slower over the whole run (3.55x against 3.17x, same prompts and seeds).
LLAMA_SERVER_SLOTS = 4


def reward_threads(engine: str) -> int:
    """Threads for the in-process reward (torch, OpenMP and BLAS pools). vLLM's CPU worker keeps its
    threads spinning between steps, so a reward beside it on the same cores gets one thread (with
    two, a reward call took 13x longer: 0.8 s instead of 60 ms); llama-server idles between
    requests, so there the reward gets every core."""
    return 1 if engine == "vllm" else os.cpu_count() or 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def started(engine: str, threads: int) -> Iterator[tuple[str, Any]]:
    """The engine's server and a backend spec pointing at it."""
    from stars_guard import engines
    from stars_guard.models import default_lm_dir, llamacpp_lm_gguf

    port = free_port()
    if engine == "llama-server":
        if not engines.llama_server_ready():
            raise SystemExit("llama-server is not built: run `python -m stars_guard.engines provision llama-server`")
        command = engines.llama_server_command(llamacpp_lm_gguf(), port, slots=LLAMA_SERVER_SLOTS, threads=threads)
        process = engines.EngineProcess(command, port, name="llama-server", timeout=120)
        spec = f"llama-server:{process.url}"
    else:
        if not engines.vllm_ready():
            raise SystemExit("vLLM is not installed: run `python -m stars_guard.engines provision vllm`")
        command = engines.vllm_command(default_lm_dir(), port, served_name="SmolLM2-135M-Instruct")
        env = {**engines.VLLM_ENV, "OMP_NUM_THREADS": str(threads)}
        process = engines.EngineProcess(command, port, name="vllm", timeout=900, env=env)
        spec = f"openai:{process.url}?tokenizer={default_lm_dir()}"
    print(f"[{engine}] starting: {' '.join(command[:3])} ...", file=sys.stderr, flush=True)
    with process:
        print(f"[{engine}] ready in {process.startup_s:.0f}s", file=sys.stderr, flush=True)
        yield spec, process


@dataclass
class Clock:
    """Seconds spent in one kind of call, fed by telemetry's `TimedReward` or `TimedBackend`."""

    seconds: float = 0.0

    def __call__(self, elapsed: float) -> None:
        self.seconds += elapsed


@dataclass
class MethodRuns:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def total(self, key: str) -> float:
        return float(sum(row.get(key) or 0 for row in self.rows))

    def summary(self) -> dict[str, Any]:
        emitted = max(self.total("tokens_emitted"), 1.0)
        wall = self.total("wall_s")
        forward = [row["llm_forward_tokens"] for row in self.rows]
        known = all(isinstance(value, int) for value in forward)
        return {
            "prompts": len(self.rows),
            "wall_s": round(wall, 2),
            "reward_s": round(self.total("reward_s"), 2),
            "drafting_s": round(self.total("drafting_s"), 2),
            "reward_share": round(self.total("reward_s") / wall, 3),
            "engine_idle_share": round(1.0 - self.total("drafting_s") / wall, 3),
            "tokens_emitted": int(self.total("tokens_emitted")),
            "tokens_sampled": int(self.total("tokens_sampled")),
            "sampled_per_emitted": round(self.total("tokens_sampled") / emitted, 2),
            "llm_calls": int(self.total("llm_calls")),
            "seconds_per_emitted_token": round(wall / emitted, 5),
            "forward_ratio": round(
                self.total("llm_forward_tokens") / (self.total("prompt_tokens") + self.total("tokens_sampled")), 3
            )
            if known
            else None,
            "rejection_rate": round(self.total("candidates_rejected") / max(self.total("candidates_sampled"), 1.0), 3),
            "refused": int(self.total("refused")),
            "mean_final_reward": round(self.total("final_reward") / len(self.rows), 4),
        }


def run_engine(engine: str, prompts: list[str], max_new_tokens: int, threads: int) -> dict[str, Any]:
    """One engine's runs, with this process's thread pools (torch, OpenMP, BLAS) at `reward_threads`."""
    import torch
    from threadpoolctl import threadpool_limits  # installed with scikit-learn (the `local` extra)

    torch.set_num_threads(reward_threads(engine))
    with threadpool_limits(limits=reward_threads(engine)):
        return measure_engine(engine, prompts, max_new_tokens, threads)


def measure_engine(engine: str, prompts: list[str], max_new_tokens: int, threads: int) -> dict[str, Any]:
    from tqdm import tqdm

    from stars_guard import STARSConfig, STARSEngine
    from stars_guard.adapters import GuardReward
    from stars_guard.specs import build_backend
    from stars_guard.telemetry.timing import TimedBackend, TimedReward

    configs = {
        "vanilla": STARSConfig.plain_sampling(max_new_tokens),
        "stars": STARSConfig(max_new_tokens=max_new_tokens),
    }
    with started(engine, threads) as (spec, process):
        clock, drafting = Clock(), Clock()
        engine_backend = build_backend(spec)
        backend = TimedBackend(engine_backend, drafting)
        reward = TimedReward(GuardReward(), clock)
        runners = {name: STARSEngine(backend, reward, config) for name, config in configs.items()}
        runners["stars"].run("Warm up.", seed=0, max_new_tokens=16)  # first-call costs off the clock
        runners["vanilla"].run("Warm up.", seed=0, max_new_tokens=16)
        runs = {name: MethodRuns() for name in runners}
        with tqdm(total=len(prompts) * len(runners), desc=engine, file=sys.stderr) as progress:
            for seed, prompt in enumerate(prompts):
                for name, runner in runners.items():
                    reward_before, drafting_before = clock.seconds, drafting.seconds
                    start = time.perf_counter()
                    result = runner.run(prompt, seed=seed)
                    wall = time.perf_counter() - start
                    stats = result.stats.as_dict()
                    runs[name].rows.append(
                        {
                            "seed": seed,
                            "wall_s": wall,
                            "reward_s": clock.seconds - reward_before,
                            "drafting_s": drafting.seconds - drafting_before,
                            "text": result.text,
                            **stats,
                        }
                    )
                    progress.update()
        engine_backend.close()
        startup = process.startup_s
    summaries = {name: method.summary() for name, method in runs.items()}
    vanilla, stars = summaries["vanilla"], summaries["stars"]
    return {
        "engine": engine,
        "spec": spec.split("?")[0],
        "startup_s": round(startup or 0.0, 1),
        "summary": summaries,
        "ratios": {
            "seconds_per_emitted_token": round(
                stars["seconds_per_emitted_token"] / vanilla["seconds_per_emitted_token"], 2
            ),
            "stars_forward_ratio": stars["forward_ratio"],
            "final_reward": round(stars["mean_final_reward"] / vanilla["mean_final_reward"], 3),
        },
        "per_prompt": {name: method.rows for name, method in runs.items()},
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Prompts: {report['prompts']}, max_new_tokens: {report['max_new_tokens']}, machine: {report['machine']}",
        "",
        "| engine | method | s / emitted token | STARS / vanilla | forward ratio | sampled / emitted | LLM calls | "
        "reward share | engine idle share | rejection rate | refused | mean final reward |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        for name in ("vanilla", "stars"):
            row = result["summary"][name]
            ratio = f"{result['ratios']['seconds_per_emitted_token']}x" if name == "stars" else ""
            lines.append(
                f"| {result['engine']} | {name} | {row['seconds_per_emitted_token']} | {ratio} | "
                f"{row['forward_ratio']} | {row['sampled_per_emitted']} | {row['llm_calls']} | {row['reward_share']} | "
                f"{row['engine_idle_share']} | {row['rejection_rate']} | {row['refused']} of {row['prompts']} | "
                f"{row['mean_final_reward']} |"
            )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    names = [result["engine"] for result in results]
    positions = list(range(len(names)))
    width = 0.38
    fig, (left, right, shares) = plt.subplots(1, 3, figsize=(15, 4))
    for offset, method in ((-width / 2, "vanilla"), (width / 2, "stars")):
        left.bar(
            [p + offset for p in positions],
            [1000 * r["summary"][method]["seconds_per_emitted_token"] for r in results],
            width,
            label=method,
        )
        right.bar(
            [p + offset for p in positions],
            [r["summary"][method]["forward_ratio"] or 0 for r in results],
            width,
            label=method,
        )
    for position, result in zip(positions, results, strict=True):
        left.annotate(
            f"{result['ratios']['seconds_per_emitted_token']}x",
            (position + width / 2, 1000 * result["summary"]["stars"]["seconds_per_emitted_token"]),
            ha="center",
            va="bottom",
        )
    right.axhline(1.0, color="grey", linewidth=0.8)
    # Where the wall time went: the engine drafting, the reward scoring, and the rest (client work,
    # HTTP round trips): the engine idles for the last two.
    labels = [f"{result['engine']}\n{method}" for result in results for method in ("vanilla", "stars")]
    rows = [result["summary"][method] for result in results for method in ("vanilla", "stars")]
    drafting = [1.0 - row["engine_idle_share"] for row in rows]
    scoring = [row["reward_share"] for row in rows]
    other = [max(0.0, 1.0 - d - s) for d, s in zip(drafting, scoring, strict=True)]
    bars = range(len(rows))
    shares.bar(bars, drafting, label="engine drafting")
    shares.bar(bars, scoring, bottom=drafting, label="reward")
    shares.bar(bars, other, bottom=[d + s for d, s in zip(drafting, scoring, strict=True)], label="other")
    shares.set_xticks(list(bars), labels)
    shares.set_title("share of wall time")
    shares.legend()
    for axis, title in ((left, "ms per emitted token"), (right, "forward tokens / (prompt + sampled)")):
        axis.set_xticks(positions, names)
        axis.set_title(title)
        axis.legend()
    fig.suptitle(f"vanilla vs STARS (default config), {report['prompts']} prompts x {report['max_new_tokens']} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(out: Path, stem: str, report: dict[str, Any], table: str, draw: Any) -> None:
    """`stem`.json, .md (the table, also printed) and .png (`draw(report, path)`) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table + "\n")
    draw(report, out / f"{stem}.png")
    print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma list of llama-server,vllm")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the engine's CPU threads")
    parser.add_argument("--quick", action="store_true", help="2 prompts, 32 new tokens")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.max_new_tokens = 2, 32
    chosen = [name.strip() for name in args.engines.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine {', '.join(unknown)}: choose from {', '.join(ENGINES)}")

    from stars_guard.bench.harness import load_prompts

    prompts, source = load_prompts(None, args.prompts)
    results = [run_engine(engine, prompts, args.max_new_tokens, args.threads) for engine in chosen]
    report = {
        "command": "python benchmarks/engines_bench.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, engine threads {args.threads}, reward threads "
        + ", ".join(f"{engine} {reward_threads(engine)}" for engine in chosen),
        "prompts": len(prompts),
        "prompt_source": Path(source).name,
        "max_new_tokens": args.max_new_tokens,
        "results": results,
    }
    write_report(args.out, "engines_bench", report, markdown(report), plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
