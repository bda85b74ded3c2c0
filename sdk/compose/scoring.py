"""Held-out text against a composition: each member's per-token log-probabilities (sliding windows
within the smallest member's context), and the memory weights fitted to them by EM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from memreg.compose.model import ComposedForCausalLM
from memreg.core.errors import ContextTooLongError
from memreg.fit import FittedWeights, em_weights

if TYPE_CHECKING:
    from fsspec.callbacks import Callback


def encode_documents(tokenizer: Any, data: Any) -> list[np.ndarray]:
    """Text (str), documents (list of str), or token ids (one sequence or a list of them) -> id arrays."""
    if isinstance(data, str):
        data = [data]
    if isinstance(data, (np.ndarray, torch.Tensor)) and np.asarray(data).ndim == 1:
        data = [data]
    data = list(data)
    if data and isinstance(data[0], (int, np.integer)):
        data = [data]
    docs = []
    for d in data:
        if isinstance(d, str):
            if tokenizer is None:
                raise ValueError("text needs a tokenizer: pass tokenizer= to compose() or give token ids")
            d = tokenizer(d, add_special_tokens=False)["input_ids"]
        arr = np.asarray(d.cpu() if isinstance(d, torch.Tensor) else d, dtype=np.int64)
        if arr.size >= 2:
            docs.append(arr)
    if not docs:
        raise ValueError("no held-out document has 2 or more tokens to score")
    return docs




def window(model: ComposedForCausalLM, context: int | None, stride: int | None) -> tuple[int, int]:
    """Sliding-window sizes within the composition's context limit (the smallest member's positions):
    context None is that limit (at most 1024), stride None half the context. A context the members
    cannot read is refused, never left to fail inside a member with an IndexError."""
    limit = model.max_positions
    if context is None:
        context = min(1024, limit) if limit else 1024
    elif limit is not None and context > limit:
        raise ContextTooLongError(f"context {context} is longer than this composition reads ({limit} positions, the "
                                  f"smallest member's): give a context of at most {limit}")
    return context, stride if stride is not None else max(1, context // 2)


def member_target_log_probs(
    model: ComposedForCausalLM, data: Any, *, context: int | None = None, stride: int | None = None,
    progress: Callback | None = None,
) -> list[np.ndarray]:
    """Per-token log p(observed token) of each distinct member (base first): one pass per member.
    Windows as `window`; `progress` (an fsspec Callback) is given the total, members x scored tokens,
    then advances per batch."""
    from memreg.evaluate import target_log_probs

    context, stride = window(model, context, stride)
    docs = encode_documents(model.tokenizer, data)
    advance = None
    if progress is not None:
        progress.set_size(len(model.members) * sum(d.size - 1 for d in docs))
        advance = progress.relative_update
    out = []
    for member in model.members:
        parts = [
            target_log_probs(member, d, context=context, stride=stride, vocab_size=model.vocab_size, progress=advance)
            for d in docs
        ]
        out.append(np.concatenate(parts))
    return out




def fit_weights(
    source: ComposedForCausalLM | Sequence[np.ndarray],
    data: Any = None,
    *,
    context: int | None = None,
    stride: int | None = None,
    max_iter: int = 5000,
    tol: float = 1e-12,
    progress: Callback | None = None,
) -> FittedWeights:
    """EM for the memory weights on held-out text.

    source: a composition (then `data` is text, documents or token ids, scored once per member, with
    `progress` as in member_target_log_probs), or per-token log-probabilities, base first, one
    array per memory. Returns one weight per memory.
    """
    if isinstance(source, ComposedForCausalLM):
        if data is None:
            raise ValueError("fit_weights(composed, data): give held-out text or token ids")
        lps = member_target_log_probs(source, data, context=context, stride=stride, progress=progress)
        fitted = em_weights(lps, max_iter=max_iter, tol=tol)
        return FittedWeights(source.per_memory(fitted.weights), fitted.base_weight, fitted.perplexity, fitted.base_perplexity,
                             fitted.tokens, fitted.iterations, fitted.converged)
    return em_weights(list(source), max_iter=max_iter, tol=tol)
