"""The memory decoder's loss: beta * KL(p_kNN || p_mem) + (1 - beta) * CE(y, p_mem).

p_kNN comes sparse (S token ids and probabilities per position, zero-padded); it is renormalised
over its support (fp16 storage and truncation to S tokens lose a little mass). KL is summed over
the support (0 * log 0 = 0) and both terms are averaged over the positions that have a target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossParts:
    loss: torch.Tensor
    kl: torch.Tensor
    ce: torch.Tensor


def memdec_loss(
    logits: torch.Tensor, labels: torch.Tensor, knn_ids: torch.Tensor, knn_probs: torch.Tensor, *,
    beta: float, vocab_size: int | None = None,
) -> LossParts:
    """logits (B, T, V); labels (B, T) next-token ids, -100 where no target; knn_ids/knn_probs (B, T, S)."""
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    logq = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    mask = labels != -100  # (B, T)
    n = mask.sum().clamp(min=1)
    ce = -(logq.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * mask).sum() / n
    p = knn_probs.float()
    p = p / p.sum(-1, keepdim=True).clamp(min=1e-12)  # (B, T, S)
    logq_s = logq.gather(-1, knn_ids.long())  # (B, T, S)
    plogp = torch.where(p > 0, p * torch.log(p.clamp(min=1e-30)), torch.zeros_like(p))
    kl_pos = (plogp - torch.where(p > 0, p * logq_s, torch.zeros_like(p))).sum(-1)  # (B, T)
    kl = (kl_pos * mask).sum() / n
    return LossParts(loss=beta * kl + (1 - beta) * ce, kl=kl, ce=ce)
