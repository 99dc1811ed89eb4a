"""Shared fixtures: the embedded default model, loaded once per test session.

Loading it per test (or per STARSChatModel) would make the standard suites far too slow; the chat
model itself shares one default backend and reward per process, and this fixture only makes sure
the first test that needs it pays the load, and that a missing model is a clear skip.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from stars_guard.errors import ModelNotFoundError

SHARED_HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless-test.jsonl.gz"


@pytest.fixture(scope="session")
def default_components() -> tuple[object, object]:
    """The process-wide default backend and reward (skips when `stars-guard models pull` was not run)."""
    from stars_guard.langchain.chat_model import default_backend, default_reward

    try:
        return default_backend(), default_reward()
    except ModelNotFoundError as exc:
        pytest.skip(f"embedded default model unavailable: {exc}")


def red_team_prompts(count: int, path: Path = SHARED_HH) -> list[str]:
    """The first `count` distinct opening requests of the HH harmless test split (skips when absent)."""
    if not path.is_file():
        pytest.skip(f"shared red-team data not found at {path}")
    prompts: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            dialogue = json.loads(line)["chosen"]
            prompt = dialogue.split("\n\nHuman: ", 1)[1].split("\n\nAssistant:", 1)[0].strip()
            if prompt and prompt not in prompts:
                prompts.append(prompt)
            if len(prompts) == count:
                break
    return prompts
