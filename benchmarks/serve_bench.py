"""Throughput of `stars-guard serve`: 8 concurrent requests against the same 8 one after another.

    python benchmarks/serve_bench.py --out benchmarks/results

Starts the real server (`stars-guard serve`, local SmolLM2 + GuardReward, default STARS config) on
127.0.0.1 once with lockstep batching (the default) and once with `--no-lockstep`, and sends the
same 8 streaming requests (same prompts, seeds and max_tokens) first one after another, then all
at once. Reports emitted tokens per second (the `usage.completion_tokens` of each answer over the
phase's wall time), time to the first streamed content chunk, and how many concurrent answers equal
their sequential run with the same seed. Writes `serve_bench.json` and `serve_bench.png` into --out.

`--engine vllm` puts a real serving engine behind it instead: vLLM's CPU build (started here with
the tests' launch line, `stars_guard.engines`) as `stars-guard serve --backend openai:URL`, where
the engine batches the concurrent requests' rounds itself. Results go to `serve_bench_vllm.*`.

    python benchmarks/serve_bench.py --engine vllm --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "How do I keep my houseplants alive while I am on holiday?",
    "What is the best way to get back at a coworker who embarrassed me?",
    "Explain what a compiler does.",
    "How can I pick the lock on my neighbour's door?",
    "Give me three tips for sleeping better.",
    "Write an insult about my sister's cooking.",
    "What should I pack for a weekend hike?",
    "How much alcohol can I drink per day?",
]


@dataclass
class Answer:
    seed: int
    text: str
    completion_tokens: int
    first_chunk_s: float
    total_s: float
    rejection_rate: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`stars-guard serve` in a subprocess of its own session; stopped on exit."""

    def __init__(self, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "stars_guard.cli", "serve", "--port", str(self.port), *extra]
        self.log = tempfile.NamedTemporaryFile(prefix="serve-bench-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {key: value for key, value in os.environ.items() if key != "STARS_GUARD_SERVE_API_KEY"}
        self.process = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        raise TimeoutError("server did not start in 300 s")

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        Path(self.log.name).unlink(missing_ok=True)


def ask(url: str, prompt: str, seed: int, max_tokens: int) -> Answer:
    """One streaming request; times the first content chunk and the whole answer."""
    body = {
        "model": "stars-guard",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "seed": seed,
        "stream": True,
    }
    started = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    final: dict[str, Any] = {}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise RuntimeError(f"server error: {chunk['error']}")
            content = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
            if content:
                first = first if first is not None else time.perf_counter() - started
                text.append(content)
            if chunk.get("usage"):
                final = chunk
    total = time.perf_counter() - started
    return Answer(
        seed=seed,
        text="".join(text),
        completion_tokens=int(final["usage"]["completion_tokens"]),
        first_chunk_s=first if first is not None else total,
        total_s=total,
        rejection_rate=float(final["stars"]["rejection_rate"]),
    )


def phase(url: str, concurrent: bool, max_tokens: int) -> tuple[list[Answer], float]:
    """All prompts, one after another or all at once; returns answers and the phase's wall time."""
    jobs = list(enumerate(PROMPTS))
    started = time.perf_counter()
    if concurrent:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            answers = list(pool.map(lambda job: ask(url, job[1], job[0], max_tokens), jobs))
    else:
        answers = [ask(url, prompt, seed, max_tokens) for seed, prompt in jobs]
    return answers, time.perf_counter() - started


def summarise(answers: list[Answer], wall_s: float) -> dict[str, Any]:
    tokens = sum(answer.completion_tokens for answer in answers)
    return {
        "wall_s": round(wall_s, 2),
        "tokens_emitted": tokens,
        "tokens_per_s": round(tokens / wall_s, 2),
        "first_chunk_s_median": round(statistics.median(a.first_chunk_s for a in answers), 3),
        "first_chunk_s_max": round(max(a.first_chunk_s for a in answers), 3),
        "mean_rejection_rate": round(statistics.mean(a.rejection_rate for a in answers), 3),
        "answers": [asdict(answer) for answer in answers],
    }


def run_mode(name: str, flags: list[str], max_tokens: int) -> dict[str, Any]:
    print(f"[{name}] starting stars-guard serve {' '.join(flags)}", file=sys.stderr)
    with Server(flags) as server:
        ask(server.url, "Say hello.", 0, 16)  # warm-up: first-call costs out of the way
        sequential, sequential_s = phase(server.url, concurrent=False, max_tokens=max_tokens)
        print(f"[{name}] sequential: {sequential_s:.1f} s", file=sys.stderr)
        together, together_s = phase(server.url, concurrent=True, max_tokens=max_tokens)
        print(f"[{name}] concurrent: {together_s:.1f} s", file=sys.stderr)
        health = httpx.get(f"{server.url}/health", timeout=10).json()
    seq, con = summarise(sequential, sequential_s), summarise(together, together_s)
    same = sum(a.text == b.text for a, b in zip(sequential, together, strict=True))
    return {
        "mode": name,
        "flags": flags,
        "sequential": seq,
        "concurrent": con,
        "throughput_ratio": round(con["tokens_per_s"] / seq["tokens_per_s"], 2),
        "identical_answers": f"{same}/{len(PROMPTS)}",
        "health": health,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [result["mode"] for result in results]
    positions = range(len(names))
    width = 0.38
    for offset, key, label in (
        (-width / 2, "sequential", "8 one after another"),
        (width / 2, "concurrent", "8 at once"),
    ):
        left.bar([p + offset for p in positions], [r[key]["tokens_per_s"] for r in results], width, label=label)
        right.bar(
            [p + offset for p in positions], [r[key]["first_chunk_s_median"] for r in results], width, label=label
        )
    for axis, title in ((left, "emitted tokens per second"), (right, "time to first chunk, median (s)")):
        axis.set_xticks(list(positions), names)
        axis.set_title(title)
        axis.legend()
    for position, result in zip(positions, results, strict=True):
        left.annotate(
            f"{result['throughput_ratio']}x",
            (position + width / 2, result["concurrent"]["tokens_per_s"]),
            ha="center",
            va="bottom",
        )
    fig.suptitle(f"stars-guard serve, SmolLM2-135M + GuardReward, {os.cpu_count()} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_on_vllm(max_tokens: int) -> list[dict[str, Any]]:
    """`stars-guard serve --backend openai:<a real vLLM>`, the vLLM started here first."""
    from stars_guard import engines
    from stars_guard.models import default_lm_dir

    if not engines.vllm_ready():
        raise SystemExit("vLLM is not installed: run `python -m stars_guard.engines provision vllm`")
    port = free_port()
    command = engines.vllm_command(default_lm_dir(), port, served_name="SmolLM2-135M-Instruct")
    env = {**engines.VLLM_ENV, "OMP_NUM_THREADS": str(os.cpu_count() or 2)}
    print("[vllm] starting vLLM (minutes)", file=sys.stderr, flush=True)
    with engines.EngineProcess(command, port, name="vllm", timeout=900, env=env) as vllm:
        spec = f"openai:{vllm.url}?tokenizer={default_lm_dir()}"
        return [run_mode("vllm", ["--backend", spec], max_tokens)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--modes", default="lockstep,no-lockstep", help="comma list of lockstep,no-lockstep")
    parser.add_argument("--engine", choices=["local", "vllm"], default="local", help="the backend behind serve")
    args = parser.parse_args()
    flags = {"lockstep": ["--lockstep"], "no-lockstep": ["--no-lockstep"]}
    if args.engine == "vllm":
        results = run_on_vllm(args.max_tokens)
    else:
        results = [run_mode(name, flags[name], args.max_tokens) for name in args.modes.split(",")]
    stem = "serve_bench" if args.engine == "local" else f"serve_bench_{args.engine}"
    report = {
        "command": "python benchmarks/serve_bench.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "max_tokens": args.max_tokens,
        "prompts": PROMPTS,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / f"{stem}.png")
    print("| mode | sequential tok/s | concurrent tok/s | ratio | first chunk median seq / conc (s) | identical |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['mode']} | {r['sequential']['tokens_per_s']} | {r['concurrent']['tokens_per_s']} | "
            f"{r['throughput_ratio']}x | {r['sequential']['first_chunk_s_median']} / "
            f"{r['concurrent']['first_chunk_s_median']} | {r['identical_answers']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
