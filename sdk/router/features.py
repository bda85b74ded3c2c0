"""What a router reads at each position, from the members' own outputs (no extra forward pass).

For K members (the base first, then each distinct memory) at one position:
  entropy    K   H(p_k) / log V: how unsure each member is, on one scale whatever the vocabulary
  top1       K   max_v p_k(v): each member's confidence in its first choice
  agreement  K-1 1 where memory i's first choice is the base's
  hidden     K   each member's last hidden state, RMS-normalised (the router projects it)
All come from the normalised log-probabilities (…, V) and, for `hidden`, the last hidden states
(…, H_k) the members return anyway; they are computed without gradients (the members are frozen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class RouterInputs:
    """Per-position features, any leading shape (…): (B, T) in a forward pass, (N,) when fitting."""

    entropy: torch.Tensor  # (…, K) float32
    top1: torch.Tensor  # (…, K) float32
    agreement: torch.Tensor  # (…, K-1) float32
    hidden: list[torch.Tensor] | None = None  # K tensors (…, H_k) float32, or None when not asked for

    @property
    def members(self) -> int:
        return int(self.entropy.shape[-1])

    def map(self, fn) -> "RouterInputs":
        """The same features with `fn` applied to every tensor (indexing, .to(device), …)."""
        return RouterInputs(fn(self.entropy), fn(self.top1), fn(self.agreement),
                            [fn(h) for h in self.hidden] if self.hidden is not None else None)

    @staticmethod
    def cat(parts: Sequence["RouterInputs"]) -> "RouterInputs":
        """Concatenate along the first dimension (positions collected window by window)."""
        hidden = None
        if parts[0].hidden is not None:
            hidden = [torch.cat([p.hidden[k] for p in parts]) for k in range(len(parts[0].hidden))]
        return RouterInputs(torch.cat([p.entropy for p in parts]), torch.cat([p.top1 for p in parts]),
                            torch.cat([p.agreement for p in parts]), hidden)


@torch.no_grad()
def position_inputs(log_probs: Sequence[torch.Tensor], hidden: Sequence[torch.Tensor] | None = None) -> RouterInputs:
    """Features of every position from each member's log-probabilities (…, V), base first, and
    optionally each member's last hidden state (…, H_k) at the same positions."""
    vocab = log_probs[0].shape[-1]
    scale = 1.0 / math.log(vocab) if vocab > 1 else 1.0
    entropy, top1, first = [], [], []
    for lp in log_probs:
        lp = lp.float()
        # entr(p) = -p log p, 0 at p = 0: a -inf log-probability gives 0, not NaN
        entropy.append(torch.special.entr(lp.exp()).sum(-1) * scale)
        best, arg = lp.max(-1)
        top1.append(best.exp())
        first.append(arg)
    agreement = [(first[0] == f).float() for f in first[1:]]
    hid = None
    if hidden is not None:
        hid = [h.float() * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6) for h in hidden]
    return RouterInputs(torch.stack(entropy, -1), torch.stack(top1, -1), torch.stack(agreement, -1), hid)
