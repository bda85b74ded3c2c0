"""Numbers for bench/quality.py: perplexity, mixtures, EM weights, paired bootstrap intervals, FLOPs.

Per-token log-probabilities (float64, one per scored position) are the unit everything is computed
from; a mixture is computed from its members' per-token log p of the observed token, exactly what
`memreg.compose` computes (the benchmark checks that on a slice).
"""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP = 2000  # resamples of the held-out documents
SEED = 0


def ppl(lp: np.ndarray) -> float:
    return float(math.exp(-float(np.mean(lp))))


def mix(base_lp: np.ndarray, others: list[np.ndarray], weights: list[float]) -> np.ndarray:
    from memreg.evaluate import mixture_log_probs

    return mixture_log_probs(base_lp, others, weights)


def em(base_lp: np.ndarray, others: list[np.ndarray]) -> list[float]:
    """Mixture weights of `others` (the base gets 1 - sum) maximising the likelihood of the text."""
    from memreg.fit import em_weights

    return [float(w) for w in em_weights([base_lp, *others]).weights]


def doc_sums(lp: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(negative log-likelihood, token count) per document: the bootstrap's unit."""
    n_docs = int(doc.max()) + 1
    return np.bincount(doc, weights=-lp, minlength=n_docs), np.bincount(doc, minlength=n_docs).astype(np.float64)


def _draws(n_docs: int) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, n_docs, size=(BOOTSTRAP, n_docs))


def interval(lp: np.ndarray, doc: np.ndarray) -> list[float]:
    """95 % percentile interval of the perplexity over held-out documents resampled with replacement."""
    nll, count = doc_sums(lp, doc)
    idx = _draws(len(nll))
    return np.exp(np.percentile(nll[idx].sum(1) / count[idx].sum(1), [2.5, 97.5])).round(4).tolist()


def paired_ratio(lp: np.ndarray, ref: np.ndarray, doc: np.ndarray) -> dict:
    """ppl(lp) / ppl(ref) with its paired 95 % interval (both scored on the same resampled documents)
    and the share of resamples where `lp` is better: below 1 means `lp` wins."""
    a, count = doc_sums(lp, doc)
    b, _ = doc_sums(ref, doc)
    idx = _draws(len(a))
    n = count[idx].sum(1)
    ratio = np.exp((a[idx].sum(1) - b[idx].sum(1)) / n)
    point = math.exp((a.sum() - b.sum()) / count.sum())
    lo, hi = np.percentile(ratio, [2.5, 97.5])
    return {"ratio": round(point, 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "p_better": round(float((ratio < 1).mean()), 4)}


def pick(candidates: dict, key: str = "val_ppl"):
    """The candidate with the lowest validation perplexity (name, info)."""
    return min(candidates.items(), key=lambda kv: kv[1][key])


def next_rate(lr: float, *, up: bool) -> float:
    """The neighbour of `lr` on the 1-3-10 ladder (1e-4, 3e-4, 1e-3, ...), above or below."""
    exp = math.floor(math.log10(lr) + 1e-9)
    mantissa = lr / 10 ** exp
    if up:
        return float(f"{3 * 10 ** exp if mantissa < 2.9 else 10 ** (exp + 1):.0e}")
    return float(f"{10 ** exp if mantissa > 1.1 else 3 * 10 ** (exp - 1):.0e}")


def search_lr(run_at, grid: list[float], *, key: str = "val_ppl", max_extensions: int = 3) -> tuple[dict, dict]:
    """Run `run_at(lr)` for every rate of the grid; while the best is at an edge of what was tried,
    try the next rate beyond that edge (1-3-10 ladder), at most `max_extensions` times, so the
    choice is interior (a one-rate grid is a stated choice, not a search). Returns the best run and
    the record the report prints: every rate tried with its validation perplexity, the chosen
    rate, the rates added, and whether the choice is interior."""
    runs = {lr: run_at(lr) for lr in grid}
    added = []
    while len(runs) > 1 and len(added) < max_extensions:
        rates, best = sorted(runs), min(runs, key=lambda lr: runs[lr][key])
        if rates[0] < best < rates[-1]:
            break
        new = next_rate(best, up=best == rates[-1])
        runs[new] = run_at(new)
        added.append(new)
    rates, best = sorted(runs), min(runs, key=lambda lr: runs[lr][key])
    return runs[best], {"grid": {f"{lr:g}": round(runs[lr][key], 4) for lr in rates}, "chosen": best,
                        "added": added, "interior": len(rates) > 2 and rates[0] < best < rates[-1]}


# ------------------------------------------------------------------------ copy vs non-copy positions
COPY_N = 8  # a position is a copy when the 8 tokens ending at it occur together in the training text


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit polynomial hash of every n-gram of `ids` (uint64 arithmetic wraps, as intended): two
    different 8-grams collide with probability ~2^-64 per pair, far below what the split can show."""
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(ids, dtype=np.uint64), n)
    h = np.zeros(len(windows), dtype=np.uint64)
    for j in range(n):
        h = h * np.uint64(0x100000001B3) + windows[:, j] + np.uint64(1)
    return h


def copy_positions(train_ids: np.ndarray, ids: np.ndarray, n: int = COPY_N) -> np.ndarray:
    """For each scored position t = 1 .. len(ids)-1 (the layout of target_log_probs): True when the
    n-gram ids[t-n+1 .. t] occurs in the training tokens, i.e. the target token continues a span
    the datastore holds verbatim. kNN retrieval wins these by construction; the rest (positions
    with fewer than n-1 tokens of context count as non-copy) is where a memory must generalise."""
    out = np.zeros(len(ids) - 1, dtype=bool)
    if len(ids) >= n and len(train_ids) >= n:
        seen = np.isin(_ngram_hashes(ids, n), _ngram_hashes(train_ids, n))
        # the n-gram starting at i ends at token i+n-1, scored position i+n-2 (none for i+n-2 < 0)
        out[max(n - 2, 0):] = seen[max(2 - n, 0):]
    return out


def copy_split(lp: np.ndarray, copy: np.ndarray, doc: np.ndarray) -> dict:
    """Perplexity with its bootstrap interval on the copy and the non-copy positions separately."""
    out = {}
    for part, mask in (("copy", copy), ("noncopy", ~copy)):
        if mask.any():
            _, d = np.unique(doc[mask], return_inverse=True)  # documents renumbered within the part
            out[part] = {"ppl": round(ppl(lp[mask]), 4), "ci95": interval(lp[mask], d), "tokens": int(mask.sum())}
        else:
            out[part] = {"ppl": None, "ci95": None, "tokens": 0}
    return out


# ------------------------------------------------------------------------------------------ FLOPs
def train_flops(params: int, tokens_seen: int, *, trainable: int | None = None) -> float:
    """6·P per token for full training; LoRA: forward 2·P, backward through the activations 2·P,
    and 6·P_lora for the adapters' own weights."""
    if trainable is None or trainable == params:
        return 6.0 * params * tokens_seen
    return (4.0 * params + 6.0 * trainable) * tokens_seen


def exact_search_flops(queries: int, keys: int, dim: int) -> float:
    return 2.0 * queries * keys * dim
