"""The multilingual gate's written training requests stay apart from the test part it is measured on."""

from __future__ import annotations

import numpy as np
import pytest

from stars_guard.adapters._multilingual import embed_requests
from stars_guard.bench.shapes import load_translations
from training.multilingual_gate import load_written

pytestmark = pytest.mark.integration

# The most similar a written request may be to a test request (multilingual-e5 cosine; unrelated
# short requests in one language sit around 0.85 on this encoder, paraphrases over 0.95).
TOO_CLOSE = 0.95


def test_no_written_request_is_a_paraphrase_of_a_test_request() -> None:
    written = load_written()
    test = [translation.text for translation in load_translations() if translation.part == "test"]
    similarity = embed_requests([text for _, text, _ in written]) @ embed_requests(test).T
    closest = similarity.max(axis=1)
    offenders = [
        (written[index][1], test[int(similarity[index].argmax())]) for index in np.flatnonzero(closest >= TOO_CLOSE)
    ]
    assert not offenders
    assert len({text for _, text, _ in written}) == len(written), "a written request appears twice"
