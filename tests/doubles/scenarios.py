"""The keyword scenario: a config and a script under which every test knows each decision.

With `CONFIG` (a fixed threshold of 0.5, K=2, judged in index order) and `KeywordReward`, every
candidate with "BAD" in it is rejected and every other one accepted. `ROUNDS` makes two segments:
the first accepted on attempt 2, the second on attempt 3 (after two rejections).
"""

from __future__ import annotations

from stars_guard.config import STARSConfig
from tests.doubles.backends import EOS

CONFIG = STARSConfig(
    threshold_mode="absolute",
    reward_threshold=0.5,
    alpha=1.0,
    segment_size=8,
    candidates_per_round=2,
    max_attempts=4,
    max_new_tokens=64,
    # The scripts spell out each round: K candidates per round, judged in index order.
    segment_budget="flat",
    round_selection="first",
)
ROUNDS = [["BAD-0001", "Hello, "], ["BAD-0002", "BAD-0003"], [f"world!{EOS}"]]
