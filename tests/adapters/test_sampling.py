"""Draft sampling of the transformers backend: greedy, temperature, exact top-p nucleus."""

from __future__ import annotations

import torch

from stars_guard.adapters.transformers_backend import _entropy, _sample


def nucleus(probs: torch.Tensor, top_p: float) -> set[int]:
    ordered = sorted(range(len(probs)), key=lambda i: -float(probs[i]))
    chosen, mass = set(), 0.0
    for index in ordered:
        if mass > top_p:
            break
        chosen.add(index)
        mass += float(probs[index])
    return chosen


def test_greedy_takes_the_argmax_of_each_row():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    assert _sample(logits, 0.0, 0.9, torch.Generator().manual_seed(0)).tolist() == [1, 0]


def test_top_p_samples_only_inside_the_nucleus_peaked_and_flat():
    generator = torch.Generator().manual_seed(0)
    peaked = torch.full((1, 5000), -10.0)
    peaked[0, :6] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    flat = torch.randn(1, 5000) * 0.01  # nucleus far larger than the shortlist: the full-sort path
    for logits in (peaked, flat):
        allowed = nucleus(torch.softmax(logits[0], dim=-1), 0.9)
        draws = {int(_sample(logits, 1.0, 0.9, generator)[0]) for _ in range(300)}
        assert draws <= allowed
        assert len(draws) > 1


def test_same_generator_seed_same_draws():
    logits = torch.randn(4, 1000)
    first = _sample(logits, 0.8, 0.95, torch.Generator().manual_seed(5))
    second = _sample(logits, 0.8, 0.95, torch.Generator().manual_seed(5))
    assert torch.equal(first, second)


def test_entropy_in_nats():
    uniform = torch.zeros(1, 8)
    assert abs(float(_entropy(uniform)[0]) - float(torch.log(torch.tensor(8.0)))) < 1e-5
    certain = torch.tensor([[100.0, 0.0, 0.0]])
    assert float(_entropy(certain)[0]) < 1e-6
