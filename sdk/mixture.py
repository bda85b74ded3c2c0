"""The mixture rule, in one place: p(y|x) = (1 - sum_i w_i) p_base(y|x) + sum_i w_i p_mem_i(y|x).

`mix_log_probs` is the one implementation, in log space (log w + log-probabilities, added by
logaddexp), never by adding raw probabilities. The composed model's forward mixes whole (B, T, V)
distributions with it; evaluation (`memreg.evaluate.mixture_log_probs`) and the EM fit
(`memreg.fit.em_weights`) mix one log-probability per token (float64 numpy arrays, viewed as
tensors without a copy).

Weights are validated where they enter (`check_weights` for one list, `check_row_weights` for a
(B, M) tensor, one row per sequence); `mix_log_probs` trusts what it is given. A router
(`memreg.router`) gives weights per position, (B, T, M) or (N, M): softmax outputs, which follow the
rule by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from memreg.core.errors import InvalidWeightsError


def check_weights(weights: Sequence[float], *, tolerance: float = 1e-9) -> list[float]:
    out = [float(w) for w in weights]
    for w in out:
        if not math.isfinite(w) or w < 0 or w > 1:
            raise InvalidWeightsError(f"memory weight {w!r} is not in [0, 1]: each memory weight must be between 0 and 1")
    if sum(out) > 1 + tolerance:
        raise InvalidWeightsError(
            f"memory weights {out} sum to {sum(out):.4g} > 1: the base gets 1 - sum(weights), so the sum must be at most 1"
        )
    return out


def check_row_weights(weights: torch.Tensor, rows: int, memories: int, *, tolerance: float = 1e-9) -> torch.Tensor:
    """Per-row weights (B, M): one row per sequence, one column per memory, each row by the rule."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim == 1 and w.shape[0] == memories:  # one row for the whole batch
        w = w.expand(rows, memories)
    if w.shape != (rows, memories):
        raise InvalidWeightsError(f"weights of shape {tuple(w.shape)}: give ({rows}, {memories}), one row per "
                                  f"sequence and one column per memory")
    bad = ~torch.isfinite(w) | (w < 0) | (w > 1)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise InvalidWeightsError(f"weights[{row}, {col}] = {float(w[row, col])!r} is not in [0, 1]: "
                                  "each memory weight must be between 0 and 1")
    sums = w.sum(-1)
    if (sums > 1 + tolerance).any():
        row = int((sums > 1 + tolerance).nonzero()[0])
        raise InvalidWeightsError(f"weights[{row}] sum to {float(sums[row]):.4g} > 1: the base gets 1 - sum, "
                                  "so each row must sum to at most 1")
    return w


def log_mixture_weights(weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """(…, K) float64: [log(1 - sum w), log w_1, ...] per row, (1, K) for one list; log 0 = -inf."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim == 1:
        w = w[None]
    base = (1.0 - w.sum(-1, keepdim=True)).clamp(min=0.0)
    return torch.cat([base, w], dim=-1).log()


def mix_log_probs(log_probs: Sequence[torch.Tensor], weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Mix normalised log-probabilities (base first, then one per weighted member) of any matching
    shapes; `weights` is one list for every row, (R, K-1) with R the first dimension of each, or
    per position, (*lead, K-1) with `lead` the leading dimensions of each (a router's (B, T, K-1)
    for (B, T, V) log-probabilities).

    A member at weight 0 in every row is left out rather than added as -inf, and elsewhere
    logaddexp(x, -inf) is x exactly: weight 0 reproduces the other members bit for bit, and a row
    mixes the same numbers whether it runs alone or in a batch (one code path for both)."""
    logw = log_mixture_weights(weights)  # (R, K) or (*lead, K)
    if len(log_probs) != logw.shape[-1]:
        raise ValueError(f"{len(log_probs)} members but {logw.shape[-1] - 1} memory weights (+1 for the base)")
    kept = [j for j in range(logw.shape[-1]) if not torch.isneginf(logw[..., j]).all()]
    out = None
    # pairwise logaddexp instead of stack + logsumexp: no (members, B, T, V) temporary
    for j in kept:
        lp = log_probs[j]
        lw = logw[..., j].to(device=lp.device, dtype=lp.dtype)
        lw = lw.view(*lw.shape, *([1] * (lp.ndim - lw.ndim)))  # broadcast over what the weights do not index
        out = lp + lw if out is None else torch.logaddexp(out, lp + lw)
    return out
