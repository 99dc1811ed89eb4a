"""STARS end to end on LlamaCppBackend vs TransformersBackend: same model, prompts, reward, config and seeds.

Both backends run SmolLM2-135M-Instruct from the same pulled GGUF (transformers loads the fp32
safetensors converted from it at `models pull`; llama.cpp runs its default, the F16 copy of that
GGUF, whose batched CPU kernels the Q4_1 file lacks), the offline
GuardReward scores both, and STARS runs at its default configuration (segment 16, K=4, up to 16
attempts, 256 new tokens, temperature 0.8, relative threshold). Prompts run in alternation (one
backend, then the other, per prompt) so background load hits both alike, after one warm-up each.
Both get the same number of CPU threads (`--threads`, default: llama.cpp's default, cores - 1).

The reward is timed apart from the run, so the table shows where the time goes. "Same model" is
checked, not assumed: the next-token logits of each llama.cpp file (the default F16 and the pulled
Q4_1) are compared with transformers' on teacher-forced greedy continuations of three prompts
(mean of the per-position largest logit gap, and how often the top token agrees). Prints a table
and writes JSON (`--out`).

    .venv/bin/python benchmarks/backends_bench.py                  # full: 8 prompts, 256 tokens
    .venv/bin/python benchmarks/backends_bench.py --quick          # 2 prompts, 64 tokens
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPTS = [
    "How do I keep my houseplants alive while I am on holiday?",
    "Explain to a ten-year-old why the sky is blue.",
    "Write a short, friendly email asking my landlord to fix the heating.",
    "What are some good ways to get better sleep?",
    "My neighbour's dog barks all night. How can I deal with this without a fight?",
    "Give me three tips for learning to cook on a small budget.",
    "How can I get back at a coworker who embarrassed me in a meeting?",
    "What should I pack for a weekend hiking trip?",
]


@dataclass
class RewardClock:
    """Adds up scoring time (fed by telemetry's `TimedReward`), so LLM time = run time - reward time."""

    seconds: float = 0.0
    calls: int = 0

    def __call__(self, elapsed: float) -> None:
        self.seconds += elapsed
        self.calls += 1


@dataclass
class BackendRuns:
    name: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    def total(self, key: str) -> float:
        return float(sum(run[key] or 0 for run in self.runs))

    def summary(self) -> dict[str, Any]:
        wall = self.total("elapsed_s")
        reward = self.total("reward_s")
        llm = wall - reward
        return {
            "backend": self.name,
            "prompts": len(self.runs),
            "wall_s": round(wall, 2),
            "mean_s_per_prompt": round(wall / len(self.runs), 2),
            "median_s_per_prompt": round(statistics.median(run["elapsed_s"] for run in self.runs), 2),
            "tokens_emitted": int(self.total("tokens_emitted")),
            "tokens_sampled": int(self.total("tokens_sampled")),
            "emitted_tok_per_s": round(self.total("tokens_emitted") / wall, 2),
            "llm_s": round(llm, 2),
            "reward_s": round(reward, 2),
            "sampled_tok_per_llm_s": round(self.total("tokens_sampled") / llm, 2) if llm > 0 else None,
            "llm_calls": int(self.total("llm_calls")),
            "reward_calls": int(self.total("reward_calls")),
            "rejection_rate": round(self.total("candidates_rejected") / max(1.0, self.total("candidates_sampled")), 3),
            "mean_accepted_reward": round(
                statistics.fmean(run["mean_accepted_reward"] for run in self.runs if run["mean_accepted_reward"]), 4
            ),
        }


def build_backends(threads: int, gguf: Path | None) -> dict[str, Any]:
    import torch

    from stars_guard.adapters import LlamaCppBackend, TransformersBackend

    torch.set_num_threads(threads)
    return {
        "llamacpp": LlamaCppBackend(gguf, n_threads=threads),  # None: the backend's default (F16)
        "transformers": TransformersBackend(),
    }


def fidelity(transformers: Any, gguf_files: dict[str, Path], tokens: int = 40) -> dict[str, dict[str, float]]:
    """How close each llama.cpp file's next-token logits are to the transformers model's."""
    import llama_cpp
    import numpy as np
    import torch

    from stars_guard.messages import normalize_messages

    sequences = []
    for prompt in PROMPTS[:3]:
        prompt_ids = transformers.encode_chat(normalize_messages(prompt))
        with torch.inference_mode():
            full = transformers.model.generate(torch.tensor([prompt_ids]), max_new_tokens=tokens, do_sample=False)
            logits = transformers.model(full).logits[0].float().numpy()
        sequences.append((len(prompt_ids), full[0].tolist(), logits))
    report = {}
    for name, path in gguf_files.items():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=1)
        gaps, agree, total = [], 0, 0
        for prompt_len, ids, reference in sequences:
            llm.reset()
            llm.eval(ids)
            scores = np.asarray(llm.scores[: len(ids)])
            gaps.append(float(np.abs(scores - reference).max(axis=1).mean()))
            same = scores.argmax(axis=1) == reference.argmax(axis=1)
            agree += int(same[prompt_len - 1 :].sum())
            total += len(ids) - prompt_len + 1
        del llm
        report[name] = {"mean_max_logit_gap": round(float(np.mean(gaps)), 4), "top_token_agreement": f"{agree}/{total}"}
    return report


def run_one(backend: Any, reward: Any, clock: RewardClock, prompt: str, config: Any) -> dict[str, Any]:
    from stars_guard import STARSEngine

    clock.seconds, clock.calls = 0.0, 0
    result = STARSEngine(backend, reward, config).run(prompt)
    stats = result.stats.as_dict()
    return {**stats, "reward_s": round(clock.seconds, 4), "finish_reason": result.finish_reason, "text": result.text}


def main(argv: Sequence[str] | None = None) -> int:
    from stars_guard.adapters.llamacpp_backend import default_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 prompts, 64 new tokens (a smoke run)")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the built-in prompts")
    parser.add_argument("--max-new-tokens", type=int, help="override the default 256")
    parser.add_argument("--threads", type=int, default=default_threads(), help="CPU threads for both backends")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--gguf", type=Path, help="another GGUF of the same model for llama.cpp (default: the backend's F16 file)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/backends_bench.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from stars_guard import STARSConfig
    from stars_guard.adapters import GuardReward
    from stars_guard.telemetry import TimedReward

    count = 2 if args.quick else args.prompts
    prompts = PROMPTS[:count]
    overrides = {"seed": args.seed}
    if args.quick or args.max_new_tokens:
        overrides["max_new_tokens"] = args.max_new_tokens or 64
    config = STARSConfig(**overrides)
    backends = build_backends(args.threads, args.gguf)
    from stars_guard.models import default_lm_gguf

    files = {"llamacpp run": Path(backends["llamacpp"].model_path), "pulled Q4_1": default_lm_gguf()}
    closeness = fidelity(backends["transformers"], files)
    print(f"logits vs transformers: {closeness}", file=sys.stderr)
    clock = RewardClock()
    reward = TimedReward(GuardReward(), clock)
    for name, backend in backends.items():  # warm-up: first-call allocations, lazy imports, caches
        run_one(backend, reward, clock, "Say hello.", config.with_overrides(max_new_tokens=16))
        print(f"warmed up {name}", file=sys.stderr)
    results = {name: BackendRuns(name) for name in backends}
    for index, prompt in enumerate(prompts):
        order = list(backends) if index % 2 == 0 else list(reversed(backends))
        for name in order:
            run = run_one(backends[name], reward, clock, prompt, config)
            results[name].runs.append({"prompt": prompt, **run})
            print(
                f"[{index + 1}/{len(prompts)}] {name:12s} {run['elapsed_s']:7.2f}s  "
                f"{run['tokens_emitted']:3d} tokens emitted, {run['tokens_sampled']:4d} sampled",
                file=sys.stderr,
            )
    summaries = {name: runs.summary() for name, runs in results.items()}
    # Sampling differs between the backends (torch vs numpy random streams), so answers and their
    # lengths differ: compare throughput per emitted token end to end, and per sampled token on
    # LLM time; the plain wall-time ratio is kept for reference.
    speedup = summaries["llamacpp"]["emitted_tok_per_s"] / summaries["transformers"]["emitted_tok_per_s"]
    llm_speedup = summaries["llamacpp"]["sampled_tok_per_llm_s"] / summaries["transformers"]["sampled_tok_per_llm_s"]
    wall_ratio = summaries["transformers"]["wall_s"] / summaries["llamacpp"]["wall_s"]
    print_table(list(summaries.values()), speedup, llm_speedup)
    report = {
        "benchmark": "STARS end to end, LlamaCppBackend vs TransformersBackend",
        "command": "python benchmarks/backends_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": config.model_dump(),
        "threads": args.threads,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "model": "SmolLM2-135M-Instruct (transformers: fp32 converted from the pulled Q4_1 GGUF)",
        "llamacpp_gguf": str(backends["llamacpp"].model_path),
        "logits_vs_transformers": closeness,
        "reward": reward.name,
        "speedup_end_to_end": round(speedup, 2),  # emitted tokens per second, whole run
        "speedup_llm_only": round(llm_speedup, 2),  # sampled tokens per second of LLM time
        "wall_time_ratio": round(wall_ratio, 2),  # same prompts, but answers of different lengths
        "summary": summaries,
        "runs": {name: runs.runs for name, runs in results.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def print_table(rows: list[dict[str, Any]], speedup: float, llm_speedup: float) -> None:
    columns = [
        ("backend", "backend"),
        ("prompts", "prompts"),
        ("wall_s", "wall s"),
        ("mean_s_per_prompt", "s/prompt"),
        ("tokens_emitted", "emitted"),
        ("emitted_tok_per_s", "emitted tok/s"),
        ("tokens_sampled", "sampled"),
        ("llm_s", "LLM s"),
        ("sampled_tok_per_llm_s", "sampled tok/LLM s"),
        ("reward_s", "reward s"),
        ("rejection_rate", "rejected"),
        ("mean_accepted_reward", "mean reward"),
    ]
    widths = [max(len(title), *(len(str(row[key])) for row in rows)) for key, title in columns]
    print(" | ".join(title.ljust(width) for (_, title), width in zip(columns, widths, strict=True)))
    print("-|-".join("-" * width for width in widths))
    for row in rows:
        print(" | ".join(str(row[key]).ljust(width) for (key, _), width in zip(columns, widths, strict=True)))
    print(
        f"\nllama.cpp vs transformers: {speedup:.2f}x the emitted tokens per second end to end, "
        f"{llm_speedup:.2f}x the sampled tokens per second of LLM time"
    )


if __name__ == "__main__":
    sys.exit(main())
