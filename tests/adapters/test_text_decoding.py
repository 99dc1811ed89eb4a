"""Candidate text from sampled token ids: characters split over segments come out whole.

Byte-level tokenizers (SmolLM2's, GPT-2's) split CJK characters and emoji over several tokens,
so a segment can end inside a character. The tokenizer here is one token per byte and decodes
as those tokenizers do (invalid UTF-8 as U+FFFD): pure logic, no model.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from stars_guard.adapters._text import REPLACEMENT, candidate_from_ids


class ByteTokenizer:
    """One token per byte; decoding replaces bytes that are not whole UTF-8 characters."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", "replace")


def segmented(text: str, size: int) -> list[str]:
    """The texts of consecutive candidates of `size` tokens, each decoded after the ones before."""
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    texts = []
    for start in range(0, len(ids), size):
        texts.append(candidate_from_ids(tokenizer, ids[:start], ids[start : start + size], hit_eos=False).text)
    return texts


@pytest.mark.parametrize("size", [1, 2, 4, 5, 8])
@pytest.mark.parametrize("text", ["こんにちは株式会社", "Grüße 👋🏽 from Zürich", "plain ASCII text"])
def test_segments_concatenate_to_the_text_without_replacement_characters(text: str, size: int) -> None:
    texts = segmented(text, size)
    assert "".join(texts) == text
    assert not any(REPLACEMENT in piece for piece in texts)


def test_token_ends_never_point_inside_a_held_back_character() -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("aこb")  # a, three bytes of こ, b
    candidate = candidate_from_ids(tokenizer, [], ids[:3], hit_eos=False)
    assert candidate.text == "a" and candidate.token_ends == (1, 1, 1)
    rest = candidate_from_ids(tokenizer, ids[:3], ids[3:], hit_eos=False)
    assert rest.text == "こb" and rest.token_ends == (1, 2)
