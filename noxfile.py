"""The interpreter matrix: the tests that need no torch, on every supported Python found here.

`make test` runs the whole suite on the project's virtual env (Python 3.11, the interpreter that
torch's CPU wheel on these machines is built for), then `nox` for the other supported Pythons:
each session installs the package without torch (`TORCH_FREE_EXTRAS`) into its own env (`make matrix`
keeps them in the user's cache, so a warm machine reinstalls only what changed) and runs
`pytest -m "not integration and not torch"` (tests/conftest.py says which tests need torch).

Interpreters are found on PATH and, where pyenv is installed, in its versions folder, so a
machine with `pyenv install 3.13` needs no shell set-up. A supported interpreter that is missing
is reported and skipped; `nox --error-on-missing-interpreters` makes that an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox

# Supported Pythons besides 3.11, which `make test` covers with the full suite.
MATRIX = ("3.12", "3.13")
# Everything a torch-free test imports: no `local` (torch, transformers), no `llamacpp`.
TORCH_FREE_EXTRAS = "langchain,agents,telemetry,http,server,bench,training,dev"

nox.options.sessions = ["torch_free"]
nox.options.reuse_existing_virtualenvs = True  # a warm CI machine reinstalls only what changed
nox.options.error_on_missing_interpreters = False


def _pyenv_interpreters() -> None:
    """Put pyenv's installed 3.12/3.13 ahead on PATH (its shims answer only for selected versions)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not root.is_dir():
        return
    found: dict[str, Path] = {}
    for folder in sorted(root.iterdir(), key=lambda path: [int(part) for part in re.findall(r"\d+", path.name)]):
        match = re.fullmatch(r"(3\.\d+)\.\d+", folder.name)
        if match and match.group(1) in MATRIX and (folder / "bin" / f"python{match.group(1)}").exists():
            found[match.group(1)] = folder / "bin"  # the newest patch release of each wins
    if found:
        os.environ["PATH"] = os.pathsep.join([*(str(path) for path in found.values()), os.environ["PATH"]])


_pyenv_interpreters()

# The matrix proves the torch-free part runs without torch only if torch is really absent.
_NO_TORCH = (
    "import importlib.util, sys; importlib.util.find_spec('torch') and "
    "sys.exit('torch is installed in this env: the torch-free matrix must run without it')"
)


@nox.session(python=list(MATRIX))
def torch_free(session: nox.Session) -> None:
    """The unit tests that need no torch (`-m "not integration and not torch"`)."""
    session.install("--quiet", "--upgrade", "pip")
    session.install("--quiet", "-e", f".[{TORCH_FREE_EXTRAS}]")
    session.run("python", "-c", _NO_TORCH)
    session.run(
        "python",
        "-m",
        "pytest",
        "tests",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not integration and not torch",
        *session.posargs,
        env={"OMP_NUM_THREADS": "1"},
    )
