"""The LangChain examples run as users run them: as scripts, on the real embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("default_components")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_lcel_chain_streams_an_answer_and_reports_the_rejection_rate() -> None:
    completed = run("lcel_chain.py", "Suggest a name for a goldfish.", "--max-tokens", "24", "--seed", "3")
    answer = completed.stdout.split("A: ", 1)[1].strip()
    assert answer
    assert "rejection rate:" in completed.stderr
    assert "candidates rejected" in completed.stderr


def test_callback_dashboard_draws_the_table_and_writes_the_png(tmp_path: Path) -> None:
    png = tmp_path / "plots" / "dashboard.png"
    completed = run(
        "callback_dashboard.py", "--prompts", "3", "--max-tokens", "24", env={"STARS_DASHBOARD_PNG": str(png)}
    )
    assert "STARS requests" in completed.stdout
    assert "over 3 requests" in completed.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5_000


def test_guarded_agent_calls_a_tool_and_prints_the_trace_with_statistics() -> None:
    completed = run("guarded_agent.py", "What is the weather in Paris?", "--seed", "3")
    trace = completed.stdout.splitlines()
    assert trace[0] == "user: What is the weather in Paris?"
    calls = [line for line in trace if line.startswith("model calls ")]
    assert calls and "candidates rejected" in calls[0] and "judged in tool calls" in calls[0]
    assert any(line.startswith("tool ") for line in trace)  # the agent ran the accepted call
    assert trace[-1].startswith("model: ")  # and answered from its result
    assert "model calls" in completed.stderr and "candidates rejected" in completed.stderr
