"""Optional dependencies of the exporters: imported only when an exporter is built."""

from __future__ import annotations

from importlib import import_module
from typing import Any

TELEMETRY_HINT = "pip install 'stars-guard[telemetry]'"


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says what to install."""


def require(module: str, purpose: str) -> Any:
    """`module`, or `MissingDependencyError` naming the extra that brings it."""
    try:
        return import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"{purpose} needs the {module.split('.')[0]} package: {TELEMETRY_HINT}") from exc
