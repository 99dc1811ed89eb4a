"""Linear heads on sentence embeddings, fitted the same way everywhere: deterministic, no sampling.

The refusal classifier (`refusal.py`) is a logistic regression on MiniLM embeddings; the
request-harm gate (`harm_gate.py`), an MLP, fits one as its baseline. Both hold out the same kind
of seeded fifth for evaluation.
"""

from __future__ import annotations

import numpy as np


def heldout_mask(count: int, seed: int = 0, fraction: float = 0.2) -> np.ndarray:
    """Which of `count` examples are held out (a seeded permutation: the same in every run)."""
    order = np.random.default_rng(seed).permutation(count)
    mask = np.zeros(count, dtype=bool)
    mask[order[: round(fraction * count)]] = True
    return mask


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float) -> np.ndarray:
    """L2-regularised logistic regression (weights, then the bias last), by L-BFGS from zeros."""
    from scipy.optimize import minimize

    design = np.hstack([features, np.ones((len(features), 1))])
    signs = np.where(labels, 1.0, -1.0)

    def loss(weights: np.ndarray) -> tuple[float, np.ndarray]:
        margin = signs * (design @ weights)
        value = np.logaddexp(0.0, -margin).mean() + l2 * float(weights[:-1] @ weights[:-1])
        grad = -(design.T @ (signs / (1.0 + np.exp(margin)))) / len(design)
        grad[:-1] += 2 * l2 * weights[:-1]
        return float(value), grad

    return np.asarray(minimize(loss, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B").x)


def logistic(features: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """P(positive) of each row."""
    return 1.0 / (1.0 + np.exp(-(features @ weights + bias)))
