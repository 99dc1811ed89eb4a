"""Overhead of the LangChain layer (STARSChatModel) over the STARS engine alone.

    python benchmarks/langchain_overhead.py --out benchmarks/results

Same prompts, same seeds, same config: every mode must produce the very same answer (checked),
so the only difference is the layer. Modes run interleaved (rotating order per prompt and
repetition) so machine-load drift hits all of them alike; each prompt's time is the median over
repetitions. A second, noise-free measurement runs the layer over a backend and reward that cost
nothing, which isolates the layer's own cost per call in milliseconds.
Prints a table and writes `langchain_overhead.json` into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from stars_guard.config import STARSConfig
from stars_guard.engine import STARSEngine
from stars_guard.langchain.callbacks import RejectionStatsHandler
from stars_guard.langchain.chat_model import STARSChatModel, default_backend, default_reward
from stars_guard.protocols import Candidate, OpenRequest

PROMPTS = [
    "How do I keep my houseplants alive while I am on holiday?",
    "Write a two-line poem about autumn.",
    "What is a good way to learn a new language?",
    "Explain what a compiler does.",
    "Suggest a name for a friendly robot.",
    "Give me one tip for sleeping better.",
]
MODES = ("engine", "invoke", "stream", "ainvoke", "invoke+handler")


def runners(engine: STARSEngine, llm: STARSChatModel) -> dict[str, Callable[[str, int], str]]:
    """One callable per mode: (prompt, seed) -> answer text."""

    def run_engine(prompt: str, seed: int) -> str:
        return engine.run(prompt, seed=seed).text

    def run_invoke(prompt: str, seed: int) -> str:
        return str(llm.invoke(prompt, seed=seed).content)

    def run_stream(prompt: str, seed: int) -> str:
        return "".join(str(chunk.content) for chunk in llm.stream(prompt, seed=seed))

    loop = asyncio.new_event_loop()  # one long-lived loop, as in a server

    def run_ainvoke(prompt: str, seed: int) -> str:
        return str(loop.run_until_complete(llm.ainvoke(prompt, seed=seed)).content)

    handler = RejectionStatsHandler()

    def run_with_handler(prompt: str, seed: int) -> str:
        return str(llm.invoke(prompt, seed=seed, config={"callbacks": [handler]}).content)

    return {
        "engine": run_engine,
        "invoke": run_invoke,
        "stream": run_stream,
        "ainvoke": run_ainvoke,
        "invoke+handler": run_with_handler,
    }


def measure(
    modes: dict[str, Callable[[str, int], str]], prompts: Sequence[str], reps: int
) -> tuple[dict[str, list[float]], list[str]]:
    """Per mode, the median seconds of each prompt; plus any answer that differed between modes."""
    names = list(modes)
    times: dict[str, list[list[float]]] = {name: [[] for _ in prompts] for name in names}
    mismatches: list[str] = []
    for rep in range(reps):
        for index, prompt in enumerate(prompts):
            seed = 1000 + index
            order = names[(rep + index) % len(names) :] + names[: (rep + index) % len(names)]
            answers: dict[str, str] = {}
            for name in order:
                started = time.perf_counter()
                answers[name] = modes[name](prompt, seed)
                times[name][index].append(time.perf_counter() - started)
            if len(set(answers.values())) != 1:
                mismatches.append(f"prompt {index} rep {rep}: answers differ between modes")
    return {
        name: [statistics.median(values) for values in per_prompt] for name, per_prompt in times.items()
    }, mismatches


# The layer's own cost: a backend and reward that cost nothing.


class _InstantGeneration:
    prompt_tokens = 8
    llm_forward_tokens = None

    def __init__(self) -> None:
        self.llm_calls = 0

    def draft(self, num_candidates: int, max_tokens: int) -> list[Candidate]:
        self.llm_calls += 1
        text = "word " * (max_tokens // 2)
        ends = tuple(range(1, len(text) + 1))[:max_tokens]
        return [Candidate(text[:max_tokens], tuple(range(max_tokens)), "length", ends) for _ in range(num_candidates)]

    def retain(self, candidate: Candidate) -> None:
        pass

    def commit(self, candidate: Candidate) -> None:
        pass

    def close(self) -> None:
        pass


class _InstantBackend:
    model_name = "instant"

    def open(self, request: OpenRequest) -> _InstantGeneration:
        return _InstantGeneration()


class _InstantReward:
    name = "instant"

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        return [1.0] * len(responses)


def layer_cost(config: STARSConfig, calls: int) -> dict[str, float]:
    """Milliseconds per call of each mode over the instant backend, and the layer's extra cost."""
    engine = STARSEngine(_InstantBackend(), _InstantReward(), config)
    llm = STARSChatModel(backend=_InstantBackend(), reward=_InstantReward(), config=config)
    modes = runners(engine, llm)
    result: dict[str, float] = {}
    for name, run in modes.items():
        run("warm up", 0)
        started = time.perf_counter()
        for call in range(calls):
            run("prompt", call)
        result[name] = (time.perf_counter() - started) / calls * 1000
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for the JSON report")
    parser.add_argument("--prompts", type=int, default=4, help=f"how many prompts (at most {len(PROMPTS)})")
    parser.add_argument("--reps", type=int, default=2, help="repetitions per prompt and mode")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--layer-calls", type=int, default=1000, help="calls per mode over the instant backend")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    config = STARSConfig(max_new_tokens=args.max_new_tokens)
    prompts = PROMPTS[: args.prompts]
    backend, reward = default_backend(), default_reward()
    engine = STARSEngine(backend, reward, config)
    llm = STARSChatModel(config=config)
    modes = runners(engine, llm)
    for name in MODES:  # warm up every path once (first-call costs are not the layer's)
        modes[name]("Hello", 1)

    started = time.perf_counter()
    medians, mismatches = measure(modes, prompts, args.reps)
    real_s = time.perf_counter() - started
    layer = layer_cost(config, args.layer_calls)

    engine_total = sum(medians["engine"])
    rows = []
    for name in MODES:
        total = sum(medians[name])
        rows.append(
            {
                "mode": name,
                "total_s": round(total, 3),
                "per_call_s": round(total / len(prompts), 3),
                "overhead_pct": round((total - engine_total) / engine_total * 100, 2),
                "layer_ms_per_call": round(layer[name] - layer["engine"], 3),
                "instant_ms_per_call": round(layer[name], 3),
            }
        )

    print(f"LangChain layer overhead over the STARS engine ({len(prompts)} prompts x {args.reps} reps, ", end="")
    print(f"max_new_tokens={args.max_new_tokens}, torch threads={torch.get_num_threads()})")
    print(f"{'mode':<16}{'total s':>10}{'per call s':>12}{'overhead':>10}{'layer ms/call':>15}")
    for row in rows:
        print(
            f"{row['mode']:<16}{row['total_s']:>10.2f}{row['per_call_s']:>12.2f}"
            f"{row['overhead_pct']:>9.1f}%{row['layer_ms_per_call']:>15.2f}"
        )
    print("same answer in every mode: " + ("yes" if not mismatches else f"NO ({len(mismatches)} differ)"))

    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": config.model_dump(),
        "prompts": prompts,
        "reps": args.reps,
        "model": backend.model_name,
        "rows": rows,
        "per_prompt_median_s": {name: [round(v, 4) for v in values] for name, values in medians.items()},
        "answers_identical": not mismatches,
        "mismatches": mismatches,
        "layer_calls": args.layer_calls,
        "wall_s": round(real_s, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "langchain_overhead.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if not mismatches else 1


if __name__ == "__main__":
    raise SystemExit(main())
