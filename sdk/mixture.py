"""The mixture rule of a base and its memories, in one place.

    p(y|x) = (1 - sum_i w_i) * p_base(y|x) + sum_i w_i * p_mem_i(y|x)

always computed in log space (logsumexp of log w + log-probabilities), never by adding raw
probabilities. Used by composition (full distributions), evaluation and weight fitting (the
log-probability of the observed token only).

Two implementations of one formula, on purpose: `mix_log_probs` mixes whole (B, T, V) torch
distributions on the model's device; `evaluate.mixture_log_probs` and `fit.em_weights` work on
float64 numpy arrays of one log-probability per token (np.logaddexp.reduce both), where a round
trip through torch would cost more than the sum. The tests check they agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from memreg.registry.errors import MemregError


class InvalidWeightsError(MemregError, ValueError):
    """Mixture weights outside the rule: each in [0, 1], sum at most 1."""


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


def log_mixture_weights(weights: Sequence[float]) -> list[float]:
    """[log(1 - sum w), log w_1, ...]; log 0 = -inf keeps a member at weight 0 exactly out."""
    ws = check_weights(weights)
    base = max(0.0, 1.0 - sum(ws))
    return [math.log(w) if w > 0 else -math.inf for w in [base, *ws]]


def mix_log_probs(log_probs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Mix normalised log-probabilities (base first, then one per memory), any matching shapes.

    A member with weight 0 is dropped rather than multiplied by -inf (which would give NaN
    where its own log-probability is -inf), so weight 0 reproduces the others exactly and a
    single member at weight 1 reproduces that member exactly.
    """
    logw = log_mixture_weights(weights)
    if len(log_probs) != len(logw):
        raise ValueError(f"{len(log_probs)} members but {len(weights)} memory weights (+1 for the base)")
    kept = [(lw, lp) for lw, lp in zip(logw, log_probs) if lw != -math.inf]
    if len(kept) == 1:
        return kept[0][1]
    # pairwise logaddexp instead of stack + logsumexp: no (members, B, T, V) temporary
    out = kept[0][1] + kept[0][0]
    for lw, lp in kept[1:]:
        out = torch.logaddexp(out, lp + lw)
    return out
