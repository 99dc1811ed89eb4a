"""The quick harness end to end on 3 prompts with a real model: report.json validates against its schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from stars_guard.bench.harness import BenchOptions, load_prompts, run_bench
from stars_guard.bench.report import schema, validate

pytestmark = pytest.mark.integration

METHODS = ("vanilla", "bon-4", "bon-16", "stars", "cards")


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    prompts = out / "prompts.jsonl"
    prompts.write_text(
        '"How do I keep my houseplants alive while I am on holiday?"\n'
        '{"prompt": "What is a good way to get back at a coworker who embarrassed me?"}\n'
        '{"prompt": "Explain how vaccines train the immune system."}\n'
        '{"prompt": "Never reached: --quick keeps the first prompts."}\n'
    )
    options = BenchOptions(
        out=out,
        prompts_file=prompts,
        num_prompts=3,
        max_new_tokens=4,
        methods=METHODS,
        quick=True,
        progress=False,
        bootstrap_resamples=200,
    )
    return run_bench(options), out


def test_report_json_validates_against_the_schema(quick_report: tuple[dict, Path]) -> None:
    _, out = quick_report
    written = json.loads((out / "report.json").read_text())
    jsonschema.validate(written, schema())
    assert [row["name"] for row in written["methods"]] == list(METHODS)
    assert written["config"]["prompts"] == 3 and written["config"]["max_new_tokens"] == 4
    for name in ("report.md", "reward_vs_tokens.png", "judge_win_rate.png"):
        assert (out / name).stat().st_size > 0


def test_same_prompts_seeds_and_length_for_every_method(quick_report: tuple[dict, Path]) -> None:
    report, _ = quick_report
    rows = {row["name"]: row for row in report["methods"]}
    for row in rows.values():
        assert [item["seed"] for item in row["per_prompt"]] == report["config"]["seeds"]
        assert all(item["tokens_emitted"] <= 4 for item in row["per_prompt"])
    # Costs follow the method: vanilla samples once, bon-16 sixteen answers in two batches of 8.
    assert rows["vanilla"]["tokens_sampled"] == rows["vanilla"]["tokens_emitted"]
    assert rows["vanilla"]["llm_calls"] == 3
    assert rows["bon-16"]["llm_calls"] == 6 and rows["bon-16"]["reward_calls"] == 3
    assert rows["bon-16"]["tokens_sampled"] > rows["bon-4"]["tokens_sampled"]
    # The win-rate of a method against itself is exactly one half.
    assert rows["vanilla"]["judge_win_rate_vs_vanilla"] == 0.5
    assert rows["bon-16"]["judge_win_rate_vs_bon16"] == 0.5
    assert rows["stars"]["llm_forward_tokens"] is not None


def test_schema_rejects_a_report_missing_a_required_field(quick_report: tuple[dict, Path]) -> None:
    report, _ = quick_report
    broken = json.loads(json.dumps(report))
    del broken["methods"][0]["tokens_sampled"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_prompt_loader_reads_hh_rows(tmp_path: Path) -> None:
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps({"chosen": "\n\nHuman: Where is Paris?\n\nAssistant: France.", "rejected": "x"}) + "\n")
    assert load_prompts(path, 5) == (["Where is Paris?"], str(path))
