"""The loss against a hand computation: beta * KL(p_kNN || p_mem) + (1 - beta) * CE."""

from __future__ import annotations

import math

import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)

from memreg.train.loss import memdec_loss  # noqa: E402


def _batch():
    # one sequence, 3 positions, vocabulary of 4 (+1 padded embedding row that must be ignored)
    logits = torch.tensor([[[1.0, 0.0, -1.0, 0.5, 9.0], [0.0, 0.0, 0.0, 0.0, 9.0], [2.0, 1.0, 0.0, -1.0, 9.0]]])
    labels = torch.tensor([[0, 3, -100]])  # the last position has no target
    knn_ids = torch.tensor([[[0, 2, 1], [3, 1, 0], [1, 2, 0]]])
    knn_probs = torch.tensor([[[0.75, 0.25, 0.0], [0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]], dtype=torch.float16)
    return logits, labels, knn_ids, knn_probs


def _by_hand(beta: float) -> tuple[float, float, float]:
    def log_softmax(row):
        z = math.log(sum(math.exp(x) for x in row))
        return [x - z for x in row]

    q0 = log_softmax([1.0, 0.0, -1.0, 0.5])
    q1 = log_softmax([0.0, 0.0, 0.0, 0.0])
    ce = -(q0[0] + q1[3]) / 2
    kl0 = 0.75 * (math.log(0.75) - q0[0]) + 0.25 * (math.log(0.25) - q0[2])
    kl1 = 0.5 * (math.log(0.5) - q1[3]) + 0.25 * (math.log(0.25) - q1[1]) + 0.25 * (math.log(0.25) - q1[0])
    kl = (kl0 + kl1) / 2
    return beta * kl + (1 - beta) * ce, kl, ce


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_loss_equals_hand_computation(beta):
    parts = memdec_loss(*_batch(), beta=beta, vocab_size=4)
    loss, kl, ce = _by_hand(beta)
    assert parts.loss.item() == pytest.approx(loss, rel=1e-5)
    assert parts.kl.item() == pytest.approx(kl, rel=1e-5)
    assert parts.ce.item() == pytest.approx(ce, rel=1e-5)


def test_kl_is_zero_when_memory_matches_knn():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = torch.log(p.clamp(min=1e-9))[None, None, :]
    parts = memdec_loss(logits, torch.tensor([[0]]), torch.tensor([[[0, 1, 2]]]), torch.tensor([[[0.5, 0.3, 0.2]]]),
                        beta=1.0)
    assert parts.kl.item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_flows_only_through_memory_logits():
    logits, labels, ids, probs = _batch()
    logits.requires_grad_(True)
    memdec_loss(logits, labels, ids, probs, beta=0.5, vocab_size=4).loss.backward()
    assert torch.all(logits.grad[..., 4] == 0)  # padded row sliced off
    assert torch.all(logits.grad[0, 2] == 0)  # position without target
