"""Held-out perplexity by sliding window, for any causal LM whose forward returns `logits`.

The expensive part is `target_log_probs`: one forward pass per window, keeping only the
log-probability of each observed next token. Perplexity of a mixture at any weight then costs
nothing more (see `mixture_perplexity`), which is how weight sweeps and EM stay cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def sliding_windows(n: int, *, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first_target) per window over n tokens: the window sees ids[start:end] and scores
    targets first_target .. end-1, so every target 1 .. n-1 is scored exactly once."""
    _check_windows(n, context, stride)
    windows: list[tuple[int, int, int]] = []
    start, scored_to = 0, 0
    while True:
        end = min(start + context, n)
        windows.append((start, end, max(scored_to + 1, start + 1)))
        scored_to = end - 1
        if end == n:
            return windows
        # overlap by at least one token, so the first target of the next window has a predecessor
        start = min(start + stride, end - 1)


def _check_windows(n: int, context: int, stride: int) -> None:
    """A window needs one token to condition on and one to score (context >= 2); then end - 1 >
    start, so every window advances and the loop ends. Context 1 used to loop forever."""
    if context < 2:
        raise ValueError(f"context {context} is too short: a window needs at least 2 tokens "
                         "(one to condition on, one to score); use --context 2 or more")
    if not 1 <= stride <= context:
        raise ValueError(f"stride {stride} must be between 1 and the context ({context} tokens)")
    if n < 2:
        raise ValueError(f"{n} tokens: need at least 2 tokens to score")


def pad_windows(ids: torch.Tensor, batch: Sequence[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (input_ids, attention_mask) batch of `batch`'s windows (start, end, first) of `ids`,
    right-padded with 0 to the longest window; the one place scoring and router fitting cut windows."""
    length = max(e - s for s, e, _ in batch)
    inp = torch.zeros(len(batch), length, dtype=torch.long)
    mask = torch.zeros(len(batch), length, dtype=torch.long)
    for i, (s, e, _) in enumerate(batch):
        inp[i, : e - s] = ids[s:e]
        mask[i, : e - s] = 1
    return inp, mask


@torch.no_grad()
def target_log_probs(
    model: torch.nn.Module,
    ids: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    context: int = 1024,
    stride: int = 512,
    vocab_size: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress=None,
    shard: tuple[int, int] = (0, 1),
) -> np.ndarray:
    """log p(x_t | x_<t) for t = 1 .. len(ids)-1, each token scored once with up to `context` tokens.

    Windows of `context` tokens advance by `stride`; each window scores only the tokens the previous
    one did not (the standard sliding-window evaluation). `vocab_size` slices padded embedding rows
    off before normalising. Returns float64 of length len(ids) - 1.

    `shard` = (rank, world): score only the batches of windows b with b % world == rank and leave
    the other positions NaN (several processes split the work; `Dist.merge_scores` joins the
    parts). The batches are the ones a single process would run, so each scored value is the same.
    """
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    n = ids_t.numel()
    if n < 2:
        raise ValueError("need at least 2 tokens to score")
    device = device or next(model.parameters()).device
    windows = sliding_windows(n, context=context, stride=stride)
    out = np.full(n - 1, np.nan)
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard {shard}: the rank must be in 0 .. world - 1")
    for b in range(rank * batch_size, len(windows), world * batch_size):
        batch = windows[b : b + batch_size]
        inp, mask = pad_windows(ids_t, batch)
        logits = model(input_ids=inp.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        # a ComposedLM already returns normalised log-probabilities; others return raw logits
        logp = logits.float() if getattr(model, "outputs_log_probs", False) else torch.log_softmax(logits.float(), dim=-1)
        for i, (s, e, first) in enumerate(batch):
            pos = torch.arange(first - s - 1, e - s - 1)  # predicting position p+1 from p
            tgt = inp[i, pos + 1].to(logp.device)
            out[first - 1 : e - 1] = logp[i, pos.to(logp.device), tgt].double().cpu().numpy()
        if progress is not None:
            progress(sum(e - first for _, e, first in batch))
    assert world > 1 or not np.isnan(out).any(), "sliding windows left a token unscored"
    return out


def perplexity(log_probs: np.ndarray) -> float:
    return float(math.exp(-float(np.mean(log_probs))))


def mixture_log_probs(base: np.ndarray, memories: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Per-token log-probability of the mixture, from each member's per-token log-probabilities
    (`memreg.mixture.mix_log_probs` over float64 views of the arrays)."""
    from memreg.mixture import mix_log_probs

    parts = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)) for a in (base, *memories)]
    return mix_log_probs(parts, weights).numpy()


def mixture_perplexity(base: np.ndarray, memories: Sequence[np.ndarray], weights: Sequence[float]) -> float:
    return perplexity(mixture_log_probs(base, memories, weights))


def weight_sweep(
    base: np.ndarray, memory: np.ndarray, grid: Sequence[float] = tuple(i / 20 for i in range(21))
) -> dict[float, float]:
    """Perplexity of base + one memory at each weight of the grid."""
    return {float(w): mixture_perplexity(base, [memory], [w]) for w in grid}
