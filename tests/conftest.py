"""Session fixtures every test folder shares: one real model and reward per test session (loading
them per test would dominate the run)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def backend():
    from stars_guard.adapters import TransformersBackend

    return TransformersBackend()


@pytest.fixture(scope="session")
def guard():
    from stars_guard.adapters import GuardReward

    return GuardReward()
