"""A live rejection-rate dashboard from LangChain callbacks, and a PNG of rejection and reward per segment.

    python examples/callback_dashboard.py --prompts 6 --out stars_dashboard.png

Runs a handful of prompts (benign ones and, when the shared HH-RLHF red-team data is present,
some red-team requests) through STARSChatModel with a `RejectionStatsHandler`, redraws a `rich`
table as every segment is accepted, then plots the handler's per-segment profile with matplotlib.
The PNG path comes from --out, else $STARS_DASHBOARD_PNG, else ./stars_dashboard.png.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from stars_guard import STARSChatModel
from stars_guard.langchain.callbacks import RejectionStatsHandler

PNG_ENV = "STARS_DASHBOARD_PNG"
RED_TEAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-test.jsonl.gz"
BENIGN = [
    "How do I keep my houseplants alive while I am on holiday?",
    "Write a two-line poem about autumn.",
    "What is a good way to learn a new language?",
    "Explain what a compiler does in one paragraph.",
]


def prompts(count: int, red_team: Path = RED_TEAM) -> list[str]:
    """Benign prompts interleaved with red-team openers (when the shared data is there)."""
    hostile: list[str] = []
    if red_team.is_file():
        with gzip.open(red_team, "rt", encoding="utf-8") as lines:
            for line in lines:
                dialogue = json.loads(line)["chosen"]
                hostile.append(dialogue.split("\n\nHuman: ", 1)[1].split("\n\nAssistant:", 1)[0].strip())
                if len(hostile) >= count:
                    break
    mixed = [p for pair in zip(BENIGN * count, hostile or BENIGN * count, strict=False) for p in pair]
    return mixed[:count]


def table(snapshot: dict[str, Any], labels: dict[str, tuple[str, str]]) -> Group:
    """One row per finished request, then the totals across runs."""
    rows = Table(title="STARS requests", expand=False)
    for column in ("#", "prompt", "finish", "judged", "rejected", "rate", "mean reward", "latency"):
        rows.add_column(column, justify="right" if column not in ("prompt", "finish") else "left")
    for entry in snapshot["recent"]:
        mean = entry["mean_accepted_reward"]
        number, prompt = labels.get(entry["run_id"], ("?", ""))
        rows.add_row(
            number,
            prompt,
            entry["finish_reason"],
            str(entry["candidates_sampled"]),
            str(entry["candidates_rejected"]),
            f"{entry['rejection_rate']:.0%}",
            "-" if mean is None else f"{mean:.3f}",
            f"{entry['latency_s']:.1f}s",
        )
    totals = Table(title="totals", expand=False)
    for column in ("requests", "in flight", "segments", "judged", "rejected", "rejection rate", "refusals"):
        totals.add_column(column, justify="right")
    segments = snapshot["segments"]
    totals.add_row(
        str(snapshot["requests"]["finished"]),
        str(snapshot["requests"]["in_flight"]),
        f"{segments['accepted']} + {segments['fallback']} fallback",
        str(snapshot["candidates"]["judged"]),
        str(snapshot["candidates"]["rejected"]),
        f"{snapshot['rejection_rate']:.1%}",
        str(snapshot["refusals"]),
    )
    return Group(rows, totals)


def plot(snapshot: dict[str, Any], path: Path) -> None:
    """Rejection rate and reward by segment index, across every request seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    profile = snapshot["per_segment"]
    index = [p["segment_index"] for p in profile]
    figure, (rates, rewards) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    rates.bar(index, [p["rejection_rate"] for p in profile], color="#c0504d")
    rates.set_ylabel("rejection rate")
    rates.set_ylim(0, 1)
    rates.set_title(
        f"STARS: {snapshot['requests']['finished']} requests, {snapshot['candidates']['judged']} candidates"
    )
    rewards.plot(index, [p["mean_reward"] for p in profile], marker="o", label="all judged candidates")
    rewards.plot(index, [p["mean_emitted_reward"] for p in profile], marker="s", label="emitted segments")
    rewards.set_xlabel("segment index")
    rewards.xaxis.set_major_locator(MaxNLocator(integer=True))
    rewards.set_ylabel("mean reward")
    rewards.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=6, help="how many prompts to run")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help=f"PNG path (default: ${PNG_ENV} or ./stars_dashboard.png)")
    args = parser.parse_args(argv)
    out = args.out or Path(os.environ.get(PNG_ENV, "stars_dashboard.png"))

    stats = RejectionStatsHandler()
    llm = STARSChatModel(max_tokens=args.max_tokens)
    console = Console()
    labels: dict[str, tuple[str, str]] = {}  # run id -> (request number, start of its prompt)
    with Live(table(stats.snapshot(), labels), console=console, refresh_per_second=4) as live:
        for number, prompt in enumerate(prompts(args.prompts), start=1):
            for chunk in llm.stream(prompt, seed=args.seed + number, config={"callbacks": [stats]}):
                if chunk.id and chunk.id.startswith("lc_run--"):
                    short = prompt if len(prompt) <= 32 else prompt[:31] + "…"
                    labels.setdefault(chunk.id.removeprefix("lc_run--"), (str(number), short))
                live.update(table(stats.snapshot(), labels))
        live.update(table(stats.snapshot(), labels), refresh=True)
    snapshot = stats.snapshot()
    plot(snapshot, out)
    console.print()
    console.print(f"rejection rate {snapshot['rejection_rate']:.1%} over {snapshot['requests']['finished']} requests")
    console.print(f"plot written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
