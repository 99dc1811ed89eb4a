"""Helpers for the dashboard tests: drive RejectionStats from the real engine, serve the routes,
read `/metrics`, and run headless Chromium against a server on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stars_guard.engine import STARSEngine
from stars_guard.events import CandidateJudged, Finished
from stars_guard.serving.dashboard import DashboardRecorder, dashboard_routes
from stars_guard.telemetry import PrometheusExporter
from stars_guard.telemetry.aggregator import RejectionStats, RunInfo, segment_payload

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})
CHART_IDS = ("chart-rejection-rate", "chart-attempts", "chart-rewards", "chart-requests", "chart-refusals")


def run_request(engine: STARSEngine, stats: RejectionStats, prompt: str, **overrides: Any) -> dict[str, Any]:
    """One engine run reported to `stats` the way a server reports it: live decisions, then the total."""
    run_id = uuid.uuid4()
    stats.start(RunInfo(run_id, engine.backend.model_name))
    try:
        for event in engine.stream(prompt, **overrides):
            if isinstance(event, CandidateJudged):
                stats.decisions(run_id, [segment_payload(event)])
            elif isinstance(event, Finished):
                result = event.result
                block = result.stats.as_dict()
                stats.finish(run_id, result.model_name, result.finish_reason, block, decisions=[])
                return block
    except Exception as exc:
        stats.fail(run_id, exc)
        raise
    raise AssertionError("the engine ended without a result")


def build_app(stats: RejectionStats, recorder: DashboardRecorder, exporter: PrometheusExporter) -> Starlette:
    """The dashboard routes plus `/metrics`, as `stars-guard serve` mounts them."""

    async def metrics(request: Request) -> Response:
        return Response(exporter.render(), media_type=exporter.content_type)

    return Starlette(routes=[Route("/metrics", metrics), *dashboard_routes(stats, recorder)])


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a Prometheus exposition, keyed by (sample name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def rejection_from_metrics(text: str) -> tuple[float, float]:
    """(rejected candidates, judged candidates) as the Prometheus metrics count them."""
    values = metric_values(text)
    return values[("stars_segments_total", (("outcome", "rejected"),))], values[("stars_candidates_total", ())]


def _chromium(args: Iterable[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="stars-chromium-") as profile:
        command = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            "--blink-settings=preferredColorScheme=1",  # light theme in screenshots, whatever the host says
            f"--user-data-dir={profile}",
            *args,
        ]
        env = {**os.environ, "HOME": profile}
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def dump_dom(url: str, *, budget_ms: int = 4000, timeout: float = 90) -> str:
    """The page's DOM after its scripts ran for `budget_ms` of virtual time (polls included)."""
    done = _chromium(["--window-size=1280,1100", f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def screenshot(url: str, path: Path, *, size: str = "1280,1160", budget_ms: int = 4000, timeout: float = 90) -> Path:
    """A PNG of the page after its scripts ran."""
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _chromium(
        [f"--window-size={size}", f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url], timeout
    )
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"chromium --screenshot failed ({done.returncode}): {done.stderr[-2000:]}")
    return path


class DomIndex(HTMLParser):
    """Attributes of every element with an id, and the tags found inside each chart <svg>."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.text: dict[str, str] = {}
        self.chart_parts: dict[str, list[str]] = {}
        self._stack: list[str] = []  # ids of open elements with text we keep
        self._svg: str | None = None
        self._svg_depth = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values: Mapping[str, str] = {key: value or "" for key, value in attrs}
        if self._svg is not None:
            self._svg_depth += 1
            self.chart_parts[self._svg].append(f"{tag}.{values.get('class', '')}".strip("."))
        element_id = values.get("id")
        if element_id:
            self.by_id[element_id] = {"tag": tag, **values}
            self.text.setdefault(element_id, "")
            if tag == "svg" and self._svg is None:
                self._svg, self._svg_depth = element_id, 0
                self.chart_parts[element_id] = []
        if tag not in VOID_TAGS:
            self._stack.append(element_id or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS:
            return
        if self._svg is not None:
            if self._svg_depth == 0 and tag == "svg":
                self._svg = None
            else:
                self._svg_depth -= 1
        if self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._stack:
            if element_id:
                self.text[element_id] += data
