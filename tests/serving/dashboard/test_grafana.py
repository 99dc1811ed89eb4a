"""docs/grafana-dashboard.json: valid JSON, and every query names only series a real exporter exposes.

The exporter is fed by the real engine (scripted backend) with accepted, fallback, refused and
failed requests, so every labelled series exists in its `render()` output. A small PromQL scanner
takes each expression apart: metric names must be sample names of that output, label matchers and
`by (...)` groupings must use labels those series carry (plus `job`/`instance`, which Prometheus
adds at scrape time), and equality matchers must name label values the exporter produces.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from stars_guard.engine import STARSEngine
from stars_guard.telemetry import PrometheusExporter
from stars_guard.telemetry.aggregator import RejectionStats
from tests.contracts import PROMETHEUS_FAMILIES
from tests.doubles import CONFIG, EOS, ROUNDS, KeywordReward
from tests.doubles import SeededBackend as ScriptedBackend
from tests.serving.dashboard.support import metric_values, run_request

GRAFANA = Path(__file__).resolve().parents[3] / "docs" / "grafana-dashboard.json"
SCRAPE_LABELS = {"job", "instance"}
FUNCTIONS = {
    "sum",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "avg",
    "max",
    "min",
    "count",
    "clamp_min",
    "clamp_max",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
# Series that only appear after something happened (a request finished, a call was timed).
DOCUMENTED_VALUES = {
    "outcome": {"stop", "length", "refusal", "time_budget", "error", "accepted", "rejected", "fallback"}
}


class FailingReward:
    name = "failing"

    def score(self, prompt: str, responses: list[str]) -> list[float]:
        raise ConnectionError("reward service down")


@pytest.fixture(scope="module")
def exposed() -> tuple[set[str], dict[str, set[str]], dict[str, set[str]]]:
    """Sample names, label names per sample name, label values per label name, from a real exporter."""
    exporter = PrometheusExporter()
    stats = RejectionStats([exporter])
    engine_runs: list[tuple[Any, Any, list[list[str]]]] = [
        (KeywordReward(), CONFIG, ROUNDS),
        (KeywordReward(), CONFIG.model_copy(update={"max_attempts": 2}), ROUNDS),
        (KeywordReward(), CONFIG.model_copy(update={"max_attempts": 2, "safety_floor": 0.2}), [["BAD-1", "BAD-2"]]),
        (KeywordReward(), CONFIG.model_copy(update={"max_new_tokens": 4}), [["abcdefgh"]]),
    ]
    for reward, config, script in engine_runs:
        backend, timed_reward = exporter.instrument(ScriptedBackend(script), reward)
        run_request(STARSEngine(backend, timed_reward, config), stats, "prompt")
    backend, failing = exporter.instrument(ScriptedBackend([[f"x{EOS}"]]), FailingReward())
    with pytest.raises(Exception):  # noqa: B017 - whichever error the engine raises, the request failed
        run_request(STARSEngine(backend, failing, CONFIG), stats, "prompt")

    names: set[str] = set()
    labels: dict[str, set[str]] = defaultdict(set)
    values: dict[str, set[str]] = defaultdict(set)
    for (name, pairs), _ in metric_values(exporter.render().decode()).items():
        names.add(name)
        for label, value in pairs:
            labels[name].add(label)
            values[label].add(value)
    return names, labels, values


def expressions(node: Any) -> list[str]:
    """Every `expr` of a panel target and the variable queries, anywhere in the dashboard."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(expressions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(expressions(item))
    return found


def scan(expr: str) -> tuple[list[str], list[tuple[str | None, str, str, str]], list[str]]:
    """(metric names, label matchers as (metric, label, op, value), grouping labels) of one PromQL expression."""
    text = re.sub(r"\$__\w+|\$\{?\w+\}?", "VAR", expr)  # Grafana variables
    metrics: list[str] = []
    matchers: list[tuple[str | None, str, str, str]] = []
    groupings: list[str] = []
    # Grafana's label_values(selector, label): the label must be on the selected series.
    for match in re.finditer(r"label_values\(\s*(.+),\s*(\w+)\s*\)", text):
        groupings.append(match.group(2))
    text = re.sub(r"label_values\(\s*(.+),\s*(\w+)\s*\)", r"\1", text)
    for match in re.finditer(r"\b(by|without)\s*\(([^)]*)\)", text):
        groupings.extend(label.strip() for label in match.group(2).split(",") if label.strip())
    text = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", text)
    for match in re.finditer(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}", text):
        metric = match.group(1)
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', match.group(2)):
            matchers.append((metric, label, op, value))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r'"[^"]*"', " ", text)
    for word in re.findall(r"[a-zA-Z_:][\w:]*", text):
        if word not in FUNCTIONS and word not in KEYWORDS and word != "VAR":
            metrics.append(word)
    return metrics, matchers, groupings


def test_scanner_takes_promql_apart() -> None:
    metrics, matchers, groupings = scan(
        'histogram_quantile(0.9, sum by (le, outcome) (rate(stars_reward_bucket{job=~"$job", outcome="x"}'
        "[$__rate_interval]))) / sum(rate(stars_candidates_total[5m]))"
    )
    assert metrics == ["stars_reward_bucket", "stars_candidates_total"]
    assert matchers == [("stars_reward_bucket", "job", "=~", "VAR"), ("stars_reward_bucket", "outcome", "=", "x")]
    assert groupings == ["le", "outcome"]
    assert scan("label_values(stars_candidates_total, job)") == (["stars_candidates_total"], [], ["job"])


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads(GRAFANA.read_text(encoding="utf-8"))
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in ("rejection rate", "attempts per segment", "reward", "requests by outcome", "tokens", "latency"):
        assert topic in titles
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}" and target["expr"].strip()


def test_rejection_rate_query_is_the_documented_one() -> None:
    dashboard = json.loads(GRAFANA.read_text(encoding="utf-8"))
    rate = next(panel for panel in dashboard["panels"] if panel["title"] == "Rejection rate")
    expr = re.sub(r"\s+", "", rate["targets"][0]["expr"])
    assert expr == (
        'sum(rate(stars_segments_total{job=~"$job",outcome="rejected"}[5m]))'
        '/sum(rate(stars_candidates_total{job=~"$job"}[5m]))'
    )


def test_every_query_uses_only_exposed_series(
    exposed: tuple[set[str], dict[str, set[str]], dict[str, set[str]]],
) -> None:
    names, labels, values = exposed
    assert {"stars_requests_total", "stars_llm_call_seconds_bucket", "stars_reward_call_seconds_count"} <= names
    assert {"refusal", "error", "stop"} <= values["outcome"]
    exprs = expressions(json.loads(GRAFANA.read_text(encoding="utf-8")))
    assert len(exprs) >= 20
    used: set[str] = set()
    for expr in exprs:
        metrics, matchers, groupings = scan(expr)
        assert metrics, expr
        for metric in metrics:
            assert metric in names, f"{metric} is not exposed by PrometheusExporter ({expr})"
            used.add(metric)
        known = set().union(*(labels[metric] for metric in metrics)) | SCRAPE_LABELS
        for label in groupings:
            assert label in known, f"grouping label {label} not on {metrics} ({expr})"
        for metric, label, op, value in matchers:
            assert label in (labels[metric] if metric else known) | SCRAPE_LABELS, (label, expr)
            if label in SCRAPE_LABELS:
                continue
            wanted = value.split("|") if op == "=~" else [value]
            assert set(wanted) <= values[label] | DOCUMENTED_VALUES.get(label, set()), (label, value, expr)
    # Every documented metric family is on the dashboard.
    families = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in used}
    assert families >= PROMETHEUS_FAMILIES
