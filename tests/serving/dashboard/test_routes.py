"""The dashboard routes over a Starlette app whose RejectionStats is fed by real engine runs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from importlib import resources

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from stars_guard.engine import STARSEngine
from stars_guard.serving.dashboard import STATIC_FILES, DashboardRecorder, dashboard_routes
from stars_guard.telemetry import PrometheusExporter
from stars_guard.telemetry.aggregator import RejectionStats, RunInfo
from tests.doubles import CONFIG, ROUNDS, KeywordReward
from tests.doubles import SeededBackend as ScriptedBackend
from tests.serving.dashboard.support import build_app, rejection_from_metrics, run_request

PROMPT = "a private prompt that must never reach the dashboard"


@pytest.fixture
def fed() -> tuple[RejectionStats, DashboardRecorder, PrometheusExporter]:
    """Two answers (the second with two fallback segments) and one request still in flight."""
    exporter = PrometheusExporter()
    recorder = DashboardRecorder()
    stats = RejectionStats([exporter, recorder])
    for config in (CONFIG, CONFIG.model_copy(update={"max_attempts": 2})):
        run_request(STARSEngine(ScriptedBackend(ROUNDS), KeywordReward(), config), stats, PROMPT)
    stats.start(RunInfo(uuid.uuid4(), "scripted-lm"))
    return stats, recorder, exporter


@pytest.fixture
def client(fed: tuple[RejectionStats, DashboardRecorder, PrometheusExporter]) -> Iterator[TestClient]:
    with TestClient(build_app(*fed)) as test_client:
        yield test_client


def test_page_links_its_local_assets(client: TestClient) -> None:
    response = client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "{{" not in page
    assert 'src="/dashboard/static/dashboard.js"' in page
    assert 'href="/dashboard/static/dashboard.css"' in page
    assert 'data-base="/dashboard"' in page
    for element in ("rejection-rate", "in-flight", "refusals", "chart-rejection-rate", "chart-attempts"):
        assert f'id="{element}"' in page
    assert client.get("/dashboard/").text == page


def test_static_assets_and_nothing_else(client: TestClient) -> None:
    for name, kind in STATIC_FILES.items():
        response = client.get(f"/dashboard/static/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"] == kind
        assert response.headers["cache-control"] == "no-cache"
    for name in ("dashboard.html", "missing.js", "..%2Fdashboard.py", "..%2F..%2Fpyproject.toml"):
        assert client.get(f"/dashboard/static/{name}").status_code == 404
    assert client.get("/dashboard/static/../dashboard.py").status_code == 404


def test_assets_reach_no_other_host() -> None:
    """No CDN, web font or remote script: the page must work on an offline host."""
    static = resources.files("stars_guard.serving").joinpath("static")
    for name in ("dashboard.html", *STATIC_FILES):
        text = static.joinpath(name).read_text(encoding="utf-8")
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)  # the SVG namespace is a name, not a fetch
        assert "@import" not in text and "url(" not in text


def test_data_has_series_window_and_totals(
    client: TestClient, fed: tuple[RejectionStats, DashboardRecorder, PrometheusExporter]
) -> None:
    stats, _, exporter = fed
    response = client.get("/dashboard/data")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert PROMPT not in response.text
    snapshot = stats.snapshot()
    rejected, judged = rejection_from_metrics(exporter.render().decode())
    assert judged == snapshot["candidates"]["judged"] == 11 and rejected == snapshot["candidates"]["rejected"] == 6
    headline = data["headline"]
    assert headline["rejection_rate"] == pytest.approx(rejected / judged)
    assert (headline["candidates_judged"], headline["candidates_rejected"]) == (11, 6)
    assert headline["requests_in_flight"] == 1 == data["totals"]["requests"]["in_flight"] == data["in_flight"]
    assert headline["requests_finished"] == 2 and headline["requests_by_outcome"] == {"stop": 2}
    assert headline["refusals"] == 0 and headline["refusal_rate"] == 0.0
    assert headline["tokens_emitted"] == snapshot["tokens"]["emitted"] > 0
    assert data["totals"]["attempts_per_segment"] == snapshot["attempts_per_segment"]
    assert 300.0 <= data["window_s"] <= 301.0 and data["step_s"] == 2.0  # rounded out to whole steps
    series = data["series"]
    assert len(series["t"]) in (150, 151)
    assert {len(values) for values in series.values()} == {len(series["t"])}
    assert sum(series["judged"]) == 11 and sum(series["rejected"]) == 6 and sum(series["finished"]) == 2
    window = data["window"]
    assert window["rejection_rate"] == pytest.approx(6 / 11)
    assert window["attempts_histogram"] == data["totals"]["attempts_per_segment"]["histogram"] == {"2": 4, "3": 1}
    assert sum(window["reward_histogram"]["accepted"]) + sum(window["reward_histogram"]["rejected"]) == 11


def test_data_query_parameters(client: TestClient) -> None:
    data = client.get("/dashboard/data", params={"window": 60, "step": 1}).json()
    assert data["window_s"] == 60.0 and data["step_s"] == 1.0 and len(data["series"]["t"]) == 60
    data = client.get("/dashboard/data", params={"window": 100000}).json()
    assert data["window_s"] == 900.0  # clamped to the recorder's retention
    for bad in ({"window": "abc"}, {"window": "-5"}, {"window": "nan"}, {"step": "0"}, {"step": "inf"}):
        response = client.get("/dashboard/data", params=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_only_get(client: TestClient) -> None:
    assert client.post("/dashboard/data").status_code == 405
    assert client.post("/dashboard").status_code == 405


def test_custom_prefix_and_mounted_under_a_root_path(
    fed: tuple[RejectionStats, DashboardRecorder, PrometheusExporter],
) -> None:
    stats, recorder, _ = fed
    app = Starlette(routes=[Mount("/guard", routes=dashboard_routes(stats, recorder, prefix="ops/live/"))])
    with TestClient(app) as client:
        page = client.get("/guard/ops/live").text
        assert 'src="/guard/ops/live/static/dashboard.js"' in page
        assert 'data-base="/guard/ops/live"' in page and 'href="/guard/metrics"' in page
        assert client.get("/guard/ops/live/static/dashboard.css").status_code == 200
        assert client.get("/guard/ops/live/data").json()["headline"]["candidates_judged"] == 11
        assert client.get("/dashboard").status_code == 404


def test_stats_taken_from_the_app_state(fed: tuple[RejectionStats, DashboardRecorder, PrometheusExporter]) -> None:
    """`dashboard_routes(None, recorder)`: for apps that create their RejectionStats themselves."""
    stats, recorder, _ = fed
    app = Starlette(routes=dashboard_routes(None, recorder))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/dashboard").status_code == 200
        assert client.get("/dashboard/data").status_code == 500  # nothing to read yet: a wiring error
        app.state.stats = stats
        assert client.get("/dashboard/data").json()["headline"]["candidates_judged"] == 11
