"""Mixture weights fitted by EM on held-out text, from each member's per-token log-probabilities.

The log-likelihood of the mixture weights, mean_t log sum_k pi_k p_k(x_t), is concave in pi, so EM
(posterior responsibilities, then pi = their mean) climbs to the global maximum: the fitted
weights are at least as good on that text as any point of a weight grid. One forward pass per
member gives the log-probabilities; EM then works on those arrays alone, mixing them with the
one mixture function (memreg.mixture.mix_log_probs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from memreg.mixture import mix_log_probs


@dataclass(frozen=True)
class FittedWeights:
    """EM's answer: one weight per memory (the base gets 1 - sum), and what it scores."""

    weights: list[float]
    base_weight: float
    perplexity: float  # of the fitted mixture on the text it was fitted on
    base_perplexity: float
    tokens: int
    iterations: int
    converged: bool


def em_weights(
    log_probs: Sequence[np.ndarray], *, max_iter: int = 5000, tol: float = 1e-12
) -> FittedWeights:
    """log_probs: per-token log p of the observed token, base first, one array (N,) per member."""
    lp = np.stack([np.asarray(x, dtype=np.float64) for x in log_probs])  # (K, N)
    if lp.ndim != 2 or lp.shape[1] == 0:
        raise ValueError("need at least one scored token per member to fit weights")
    k, n = lp.shape
    pi = np.full(k, 1.0 / k)
    prev = -math.inf
    converged = False
    it = 0
    lps = [torch.from_numpy(row) for row in lp]
    for it in range(1, max_iter + 1):
        lse = _mixture(lps, pi)  # (N,) log p_mix(x_t)
        ll = float(lse.mean())
        pi = np.exp(_joint(lp, pi) - lse).mean(axis=1)  # responsibilities, averaged
        pi /= pi.sum()
        if ll - prev < tol:
            converged = True
            break
        prev = ll
    ll = float(_mixture(lps, pi).mean())
    weights = [float(w) for w in pi[1:]]
    # rounding may push the sum a hair past 1; the mixture rule refuses that
    excess = sum(weights) - 1.0
    if excess > 0:
        weights = [w / (1.0 + excess) for w in weights]
    return FittedWeights(
        weights=weights,
        base_weight=float(pi[0]),
        perplexity=math.exp(-ll),
        base_perplexity=math.exp(-float(lp[0].mean())),
        tokens=n,
        iterations=it,
        converged=converged,
    )


def _mixture(lps: list[torch.Tensor], pi: np.ndarray) -> np.ndarray:
    """log p_mix(x_t) at weights pi (base first): the mixture rule's one implementation."""
    return mix_log_probs(lps, [float(w) for w in pi[1:]]).numpy()


def _joint(lp: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """log pi_k + log p_k(x_t): a member at weight 0 contributes -inf (exp 0), never NaN."""
    with np.errstate(divide="ignore"):
        return lp + np.log(pi)[:, None]
