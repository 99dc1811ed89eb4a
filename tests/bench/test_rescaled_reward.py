"""Bench-only reward rescalings: same ranking as the inner reward, other units."""

from __future__ import annotations

import math

import pytest

from stars_guard.bench.harness import RescaledReward, build_bench_reward


class Fixed:
    name = "fixed"

    def score(self, prompt: str, responses: list[str]) -> list[float]:
        return [float(len(text)) / 10 for text in responses]


def test_logit_and_affine_keep_the_ranking():
    texts = ["a", "abc", "ab", ""]
    logit = RescaledReward(Fixed(), "logit").score("p", texts)
    affine = RescaledReward(Fixed(), "affine", 40.0, -25.0).score("p", texts)
    assert logit[0] == pytest.approx(math.log(0.1 / 0.9))
    assert affine == pytest.approx([-21.0, -13.0, -17.0, -25.0])
    order = sorted(range(4), key=lambda i: Fixed().score("p", texts)[i])
    assert sorted(range(4), key=lambda i: logit[i]) == order == sorted(range(4), key=lambda i: affine[i])
    assert RescaledReward(Fixed(), "logit").name == "logit(fixed)"


@pytest.mark.parametrize("spec", ["affine:oops:default", "affine:-1,0:default", "affine:2,0:"])
def test_bad_rescaling_specs_say_how_to_write_them(spec):
    with pytest.raises(ValueError, match="affine"):
        build_bench_reward(spec)
