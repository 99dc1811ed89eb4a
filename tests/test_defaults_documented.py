"""The documented defaults are `STARSConfig`'s: one source, and this test fails the day they drift.

`STARSConfig` (stars_guard/config.py) is the source. The CLI help reads it (`cli._default`); the
docs cannot, so they are parsed here: the field table of docs/configuration.md (every field, its
default) and the sentences of README.md and docs/configuration.md that state a default. Code
examples that pass a value (`STARSConfig(segment_size=16)`) are the reader's choice, not a default,
and are not checked.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import PydanticUndefined

from stars_guard.cli import build_parser
from stars_guard.config import STARSConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGURATION = ROOT / "docs" / "configuration.md"
DEFAULTS = STARSConfig()


def config_default(name: str) -> Any:
    field = STARSConfig.model_fields[name]
    return field.default_factory() if field.default is PydanticUndefined else field.default  # type: ignore[call-arg,misc]


# The field table of docs/configuration.md ------------------------------------------------------


def documented_table() -> dict[str, str]:
    """`field -> default cell` of the table under `## Fields`."""
    section = CONFIGURATION.read_text(encoding="utf-8").split("\n## Fields\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \| ([^|]*) \|", line)
        if match:
            assert match[1] not in rows, f"docs/configuration.md lists {match[1]} twice"
            rows[match[1]] = match[2].strip()
    return rows


def parse_cell(cell: str) -> Any:
    """A table cell as a value: `none`, a number (`0 (= 2K)` is 0), `name` or a quoted string."""
    value = re.sub(r"\s*\(.*\)$", "", cell).strip()  # an explanation in brackets after the value
    if value == "none":
        return None
    if re.fullmatch(r"`[^`]*`", value):
        return value.strip("`")
    return ast.literal_eval(value)  # numbers and "quoted strings"


def test_the_table_lists_every_field_and_nothing_else() -> None:
    documented, fields = set(documented_table()), set(STARSConfig.model_fields)
    assert not fields - documented, f"STARSConfig fields missing from docs/configuration.md: {fields - documented}"
    assert not documented - fields, f"docs/configuration.md lists fields STARSConfig lacks: {documented - fields}"


@pytest.mark.parametrize("name", sorted(STARSConfig.model_fields))
def test_the_tables_default_is_the_configs(name: str) -> None:
    cell = documented_table().get(name)
    if cell is None:
        pytest.skip(f"{name} is not in the table (reported by the test above)")
    assert parse_cell(cell) == config_default(name), f"docs/configuration.md: {name} default {cell!r}"


def test_the_parser_reads_every_kind_of_cell() -> None:
    assert parse_cell("8") == 8
    assert parse_cell("0.95") == 0.95
    assert parse_cell("0 (= 2K)") == 0
    assert parse_cell("none") is None
    assert parse_cell("`shaped`") == "shaped"
    assert parse_cell('"I can\'t help with that."') == "I can't help with that."


def test_the_guard_rewards_documented_floor_is_its_own() -> None:
    from stars_guard.adapters.guard_reward import DEFAULT_SAFETY_FLOOR

    cell = documented_table()["safety_floor"]
    assert re.search(rf"`GuardReward`: {DEFAULT_SAFETY_FLOOR}\b", CONFIGURATION.read_text(encoding="utf-8")), cell


# Statements of defaults in prose ------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """A sentence in `doc` stating a default: `pattern`'s group must equal `expected(STARSConfig())`."""

    doc: str
    pattern: str
    expected: Callable[[STARSConfig], object]


def _veto(config: STARSConfig) -> str:
    from stars_guard.adapters.guard_reward import DEFAULT_SAFETY_FLOOR

    # "on": the default `auto` takes the default reward's own floor, and that reward ships one.
    return "on" if config.safety_floor == "auto" and DEFAULT_SAFETY_FLOOR is not None else "off"


STATEMENTS = (
    Statement("README.md", r"short segments \((\d+) tokens by default\)", lambda c: c.segment_size),
    Statement("README.md", r"a floor \(the veto, (\w+) by default\)", _veto),
    Statement("README.md", r"With the default (\w+)-of-round\s+judging", lambda c: c.round_selection),
    Statement("README.md", r"when none does after a few rounds,\s+the (\w+) one does", lambda c: c.fallback),
    Statement("docs/configuration.md", r"\*\*`(\w+)` \(default, no tuning\)\.\*\*", lambda c: c.threshold_mode),
    Statement("docs/configuration.md", r"With the defaults \(q = ([\d.]+),", lambda c: c.relative_quantile),
    Statement("docs/configuration.md", r"window = 2K = (\d+),", lambda c: c.effective_window),
    Statement("docs/configuration.md", r'window = 2K = \d+, `round_selection="(\w+)"`\)', lambda c: c.round_selection),
)


@pytest.mark.parametrize("statement", STATEMENTS, ids=lambda s: f"{s.doc}: {s.pattern[:40]}")
def test_each_stated_default_is_the_configs(statement: Statement) -> None:
    text = (ROOT / statement.doc).read_text(encoding="utf-8")
    matches = re.findall(statement.pattern, text)
    assert matches, f"{statement.doc} no longer says {statement.pattern!r}: reword this test's STATEMENTS with it"
    expected = str(statement.expected(DEFAULTS))
    assert all(found == expected for found in matches), f"{statement.doc}: {matches} where the config says {expected}"


# The command line ---------------------------------------------------------------------------------

# Flags named differently from their STARSConfig field.
FLAG_FIELDS = {"candidates": "candidates_per_round"}


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_the_help_states_the_configs_defaults(command: str) -> None:
    stated = {}
    for action in _commands(build_parser())[command]._actions:
        field = FLAG_FIELDS.get(action.dest, action.dest)
        match = re.search(r"\((?:default )?([\d.]+)\)$", action.help or "")
        if field in STARSConfig.model_fields and match:
            stated[field] = match[1]
    assert {"max_new_tokens", "segment_size", "candidates_per_round", "max_attempts"} <= set(stated)
    for field, value in stated.items():
        assert ast.literal_eval(value) == config_default(field), f"stars-guard {command} --help: {field} {value}"
