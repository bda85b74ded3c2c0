"""`Router`: a small MLP from per-position features to mixture weights over [base, memories...].

    features (…, F) -> Linear(F, units) -> tanh -> Linear(units, K) -> softmax  = weights (…, K)

The softmax makes every position's weights sum to 1 (the base gets weights[..., 0]). Each weight is
lifted to at least `floor` (w = floor + (1 - K floor) softmax, still summing to 1) so no member's
log-weight is ever -inf while fitting. A `threshold` sends a position whose memories' total weight
is below it to the base alone (weights exactly [1, 0, …]); it applies when the router is used, not
while it is fitted (it has no gradient). The output layer starts at zero with the bias at the log of
given weights: an unfitted router is the fixed-weight mixture at those weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from memreg.router.features import RouterInputs
from memreg.schemas.router import RouterConfig


class Router(nn.Module):
    def __init__(self, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        k = config.members
        feats = set(config.features)
        p = config.hidden_projection
        n_in = (k if "entropy" in feats else 0) + (k if "top1" in feats else 0) + (k - 1 if "agreement" in feats else 0)
        if "hidden" in feats:
            # one projection per member: the members' hidden sizes differ (lmdeploy reads both states)
            self.proj = nn.ModuleList([nn.Linear(h, p, bias=False) for h in config.hidden_sizes])
            n_in += k * p
        else:
            self.proj = None
        self.inp = nn.Linear(n_in, config.hidden_units)
        self.out = nn.Linear(config.hidden_units, k)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def uses_hidden(self) -> bool:
        return self.proj is not None

    def start_at(self, weights: Sequence[float]) -> "Router":
        """Output weights (base first) at every position until fitted: out = 0, bias = log w."""
        w = torch.as_tensor(list(weights), dtype=torch.float64).clamp(min=1e-12)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.copy_(w.log().to(self.out.bias.dtype))
        return self

    def logits(self, x: RouterInputs) -> torch.Tensor:
        """(…, K) unnormalised scores."""
        dtype = self.inp.weight.dtype
        device = self.inp.weight.device
        parts = []
        feats = self.config.features
        if "entropy" in feats:
            parts.append(x.entropy)
        if "top1" in feats:
            parts.append(x.top1)
        if "agreement" in feats:
            parts.append(x.agreement)
        parts = [t.to(device=device, dtype=dtype) for t in parts]
        if self.proj is not None:
            if x.hidden is None:
                raise ValueError("this router reads the members' hidden states: compute its inputs with hidden=")
            parts += [proj(h.to(device=device, dtype=dtype)) for proj, h in zip(self.proj, x.hidden)]
        return self.out(torch.tanh(self.inp(torch.cat(parts, -1))))

    def forward(self, x: RouterInputs, *, threshold: bool = True) -> torch.Tensor:
        """(…, K) float64 weights, base first, each position summing to 1."""
        k = self.config.members
        w = torch.softmax(self.logits(x).double(), dim=-1)
        floor = self.config.floor
        if floor:
            w = floor + (1.0 - k * floor) * w
        t = self.config.threshold
        if threshold and t is not None:
            base_only = (1.0 - w[..., 0]) < t
            if base_only.any():
                one_hot = torch.zeros_like(w)
                one_hot[..., 0] = 1.0
                w = torch.where(base_only[..., None], one_hot, w)
        return w

    def memory_weights(self, x: RouterInputs) -> torch.Tensor:
        """(…, K-1): the memories' weights, as the mixture rule takes them (the base gets 1 - sum)."""
        return self(x)[..., 1:]
