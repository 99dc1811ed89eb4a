"""Scripted backends and rewards for the unit tests (never used by the integration tests).

`backends`: `ScriptedBackend` and its `ScriptedGeneration` (one character per token), with the
presets `SeededBackend` and `ServerBackend`; `rewards`: `ScriptedReward`, `KeywordReward`,
`FailingReward`; `scenarios`: `CONFIG` and `ROUNDS`, under which `KeywordReward` decides exactly.
"""

from tests.doubles.backends import (
    EOS,
    ScriptedBackend,
    ScriptedGeneration,
    SeededBackend,
    ServerBackend,
    make_candidate,
    two_segments,
)
from tests.doubles.rewards import FailingReward, KeywordReward, ScriptedReward, marker_reward, reward_table
from tests.doubles.scenarios import CONFIG, ROUNDS

__all__ = [
    "CONFIG",
    "EOS",
    "ROUNDS",
    "FailingReward",
    "KeywordReward",
    "ScriptedBackend",
    "ScriptedGeneration",
    "ScriptedReward",
    "SeededBackend",
    "ServerBackend",
    "make_candidate",
    "marker_reward",
    "reward_table",
    "two_segments",
]
