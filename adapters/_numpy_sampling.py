"""Next-token sampling and UTF-8 bookkeeping on numpy logits, for the llama.cpp backend.

The same rules as `TransformersBackend` (greedy at temperature 0, else temperature then an exact
top-p nucleus), so both in-process backends draft alike; kept apart from the backend so its file
holds only what talks to llama.cpp.
"""

from __future__ import annotations

import numpy as np

NUCLEUS_SHORTLIST = 2048  # top-p is computed on the most likely tokens first; the full sort only if needed


def complete_utf8(data: bytes) -> bytes:
    """`data` without a trailing incomplete UTF-8 character."""
    tail = incomplete_utf8_tail(data)
    return data[: len(data) - len(tail)]


def incomplete_utf8_tail(data: bytes) -> bytes:
    """The trailing bytes of `data` that do not yet form a complete UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): how long should its character be?
            needed = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return data[-back:] if needed > back else b""
    return b""


def entropy(logits: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row's next-token distribution."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -(np.exp(log_probs) * log_probs).sum(axis=-1)


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """Greedy for temperature 0, else temperature then nucleus sampling; one token per row."""
    if temperature == 0.0:
        return logits.argmax(axis=-1)
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=-1, keepdims=True)
    tokens = np.empty(probs.shape[0], dtype=np.int64)
    for row in range(probs.shape[0]):
        tokens[row] = nucleus(probs[row], top_p, rng)
    return tokens


def nucleus(probs: np.ndarray, top_p: float, rng: np.random.Generator) -> int:
    if top_p >= 1.0:
        return int(rng.choice(probs.shape[0], p=probs))
    shortlist = min(NUCLEUS_SHORTLIST, probs.shape[0])
    order = np.argpartition(-probs, shortlist - 1)[:shortlist] if shortlist < probs.shape[0] else np.arange(shortlist)
    order = order[np.argsort(-probs[order], kind="stable")]
    sorted_probs = probs[order]
    if sorted_probs.sum() < top_p and shortlist < probs.shape[0]:  # the nucleus is wider than the shortlist
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
    keep = (np.cumsum(sorted_probs) - sorted_probs) <= top_p  # same rule as TransformersBackend
    kept = sorted_probs[keep]
    choice = rng.choice(kept.shape[0], p=kept / kept.sum())
    return int(order[choice])
