"""Prompts from the shared HH-RLHF harmless split, for tests that may use it (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stars_guard.datasets import load_hh_prompts

SHARED_HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-test.jsonl.gz"


def hh_prompts(count: int, path: Path = SHARED_HH) -> list[str]:
    """The first `count` distinct opening requests; skips the calling test when the data is absent."""
    if not path.is_file():
        pytest.skip(f"shared HH data not found at {path}")
    return load_hh_prompts(path, count)
