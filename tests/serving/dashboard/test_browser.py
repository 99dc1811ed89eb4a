"""The dashboard in headless Chromium against the real chat server with real traffic.

`stars-guard serve`'s app runs on 127.0.0.1 over the embedded default model and guard reward,
with the dashboard wired in as the server wires it. After three small requests through the
official `openai` client, Chromium loads `/dashboard`, runs its script (which polls
`/dashboard/data`), and the rendered DOM must show every chart and a rejection-rate figure equal
to the one computed from `/metrics`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving.dashboard.live import PROMPTS, LiveDashboard, live_chat_server, send_traffic
from tests.serving.dashboard.support import CHART_IDS, CHROMIUM, DomIndex, dump_dom, rejection_from_metrics, screenshot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="headless Chromium not installed (make browser)"),
]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[LiveDashboard, list[dict]]]:
    from stars_guard.errors import ModelNotFoundError
    from stars_guard.langchain.chat_model import default_backend, default_reward

    try:
        backend, reward = default_backend(), default_reward()
    except ModelNotFoundError as exc:
        pytest.skip(f"embedded default model unavailable: {exc}")
    from stars_guard import STARSConfig

    # Index-order judging rejects often enough on three short answers for the figure to mean something.
    with live_chat_server(backend, reward, STARSConfig(round_selection="first")) as live:
        yield live, send_traffic(live.url, PROMPTS[:3], max_tokens=16)


def test_rendered_rejection_rate_matches_metrics(served: tuple[LiveDashboard, list[dict]]) -> None:
    live, blocks = served
    rejected, judged = rejection_from_metrics(httpx.get(f"{live.url}/metrics", timeout=10).text)
    assert judged == sum(block["candidates_sampled"] for block in blocks) > 0
    assert rejected == sum(block["candidates_rejected"] for block in blocks)
    # 4-token segments under the relative threshold: some candidates always fall short, so the
    # comparison below is between two non-trivial numbers.
    assert rejected > 0, "no candidate was rejected: the figure check would prove little"

    dom = DomIndex(dump_dom(f"{live.url}/dashboard"))

    figure = dom.by_id["rejection-rate"]
    assert figure["data-value"], "the page never filled in its figures (did the script run?)"
    assert float(figure["data-value"]) == pytest.approx(rejected / judged, abs=1e-12)
    assert (int(figure["data-judged"]), int(figure["data-rejected"])) == (judged, rejected)
    assert dom.text["rejection-rate"].strip() == f"{100 * rejected / judged:.1f}%"
    assert dom.by_id["requests-finished"]["data-value"] == "3"
    assert dom.by_id["in-flight"]["data-value"] == "0"
    assert dom.by_id["status"]["data-state"] == "live"
    # Every chart was drawn: axes on all, and the marks of the data the requests produced.
    for chart in CHART_IDS:
        assert dom.by_id[chart]["tag"] == "svg" and "line.axis" in dom.chart_parts[chart], chart
    assert "rect.bar volume" in dom.chart_parts["chart-rejection-rate"]
    assert any(
        part.startswith(("path.series-line", "circle.rate-dot")) for part in dom.chart_parts["chart-rejection-rate"]
    )
    assert "rect.bar attempts" in dom.chart_parts["chart-attempts"]
    assert "rect.bar accepted" in dom.chart_parts["chart-rewards"]
    assert "rect.bar finished" in dom.chart_parts["chart-requests"]
    assert "path.series-line flight" in dom.chart_parts["chart-requests"]
    assert "no finished requests yet" not in dom.text["recent"]


def test_screenshot_is_a_full_page_png(served: tuple[LiveDashboard, list[dict]], tmp_path: Path) -> None:
    live, _ = served
    png = screenshot(f"{live.url}/dashboard?window=60", tmp_path / "dashboard.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1280, 1160)
    assert len(png) > 30_000  # a drawn page, not a blank one
