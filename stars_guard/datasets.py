"""Prompt loaders: HH-RLHF-format dialogues and JSONL prompt files."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path


def first_human_turn(dialogue: str) -> str:
    """The opening request of an HH dialogue (`\\n\\nHuman: ...\\n\\nAssistant: ...`)."""
    parts = dialogue.split("\n\nHuman: ", 1)
    if len(parts) != 2:
        raise ValueError("not an HH-RLHF dialogue: it has no '\\n\\nHuman: ' turn")
    return parts[1].split("\n\nAssistant:", 1)[0].strip()


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:  # type: ignore[operator]
        yield from lines


def load_hh_prompts(path: str | Path, count: int | None = None) -> list[str]:
    """Distinct opening requests of the dialogues in an HH-RLHF JSONL(.gz) file, in file order."""
    prompts: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(_lines(Path(path)), start=1):
        if not line.strip():
            continue
        try:
            prompt = first_human_turn(json.loads(line)["chosen"])
        except (json.JSONDecodeError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: not an HH-RLHF row with a 'chosen' dialogue ({exc})") from exc
        if prompt and prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
        if count is not None and len(prompts) == count:
            break
    return prompts
