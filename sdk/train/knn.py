"""Stage 4: kNN targets. For every datastore row (a training position), search its neighbours,
remove the row itself *by id* (faiss returns ties, e.g. duplicated keys, in any order, so "drop
the first result" as in the reference code can drop the wrong one), and turn squared L2 distances
into p_kNN(v) = sum over neighbours with value v of softmax(-d / T). Stored sparse: the `support`
most probable tokens per row, ids int32 (N, S) and probabilities float16 (N, S), zero-padded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from memreg.core.fsutil import atomic_write_json
from memreg.train.datastore import release_rows


def search(index, keys: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k+1 nearest neighbours of datastore rows `rows` (squared L2 distances, ids)."""
    q = np.ascontiguousarray(keys[rows], dtype=np.float32)
    return index.search(q, k + 1)


def knn_sparse(
    dists: np.ndarray, ids: np.ndarray, query_rows: np.ndarray, values: np.ndarray, *, k: int, temperature: float,
    stats: dict[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """p_kNN per query as (tokens (B, K'), probabilities (B, K')), K' = neighbours searched, unused slots 0.

    Self removed by id, the k nearest others kept, softmax(-d / T) over them, summed per token (a
    sort and a segment sum over the neighbours: O(B * K) whatever the vocabulary size).
    """
    d = torch.as_tensor(np.asarray(dists, dtype=np.float64))
    i = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    order = torch.argsort(d, dim=1, stable=True)  # do not trust faiss to sort ties or approximate results
    d, i = d.gather(1, order), i.gather(1, order)
    keep = (i != torch.as_tensor(query_rows, dtype=torch.int64)[:, None]) & (i >= 0)
    keep &= torch.cumsum(keep.long(), dim=1) <= k  # the k nearest that are not the query itself
    logits = torch.where(keep, -d / temperature, torch.tensor(-math.inf, dtype=d.dtype))
    w = torch.nan_to_num(torch.softmax(logits, dim=1), nan=0.0)  # (B, K'); a row without neighbours is all 0
    w = torch.where(keep, w, torch.zeros_like(w))
    vals = torch.as_tensor(np.asarray(values)[np.clip(i.numpy(), 0, None)], dtype=torch.int64)
    vals = torch.where(keep, vals, torch.full_like(vals, -1))
    sv, perm = torch.sort(vals, dim=1, stable=True)
    sw = w.gather(1, perm)
    seg = torch.cumsum(torch.cat([torch.zeros_like(sv[:, :1]), (sv[:, 1:] != sv[:, :-1]).long()], 1), 1)
    probs = torch.zeros_like(sw).scatter_add_(1, seg, sw)  # (B, K') one slot per distinct token
    tokens = torch.zeros_like(sv).scatter_(1, seg, sv.clamp(min=0))
    if stats is not None:  # sums over queries of exp(entropy): effective neighbours and effective tokens
        stats["queries"] = stats.get("queries", 0.0) + float(len(w))
        stats["neighbours"] = stats.get("neighbours", 0.0) + float(_exp_entropy(w).sum())
        stats["tokens"] = stats.get("tokens", 0.0) + float(_exp_entropy(probs).sum())
    return tokens, probs


def _exp_entropy(p: torch.Tensor) -> torch.Tensor:
    """exp(H(p)) per row: the number of equally likely outcomes with the same entropy."""
    plogp = torch.where(p > 0, p * torch.log(p.clamp(min=1e-300)), torch.zeros_like(p))
    return torch.exp(-plogp.sum(1))


def effective_counts(stats: dict[str, float]) -> dict[str, float]:
    """Mean over queries of exp(entropy) of the neighbour weights and of p_kNN over tokens."""
    n = stats.get("queries", 0.0)
    if not n:
        return {}
    return {"effective_neighbours": round(stats["neighbours"] / n, 4), "effective_tokens": round(stats["tokens"] / n, 4)}


def knn_distribution(
    dists: np.ndarray, ids: np.ndarray, query_rows: np.ndarray, values: np.ndarray, *,
    k: int, temperature: float, vocab_size: int,
) -> torch.Tensor:
    """Dense p_kNN (B, V) float64 (for checks and small vocabularies)."""
    tokens, probs = knn_sparse(dists, ids, query_rows, values, k=k, temperature=temperature)
    return torch.zeros(len(tokens), vocab_size, dtype=torch.float64).scatter_add_(1, tokens, probs)


def sparsify(tokens: torch.Tensor, probs: torch.Tensor, support: int) -> tuple[np.ndarray, np.ndarray]:
    """The `support` most probable tokens (ids int32, probabilities float16), zero-padded."""
    s = min(support, probs.shape[1])
    top, where = torch.topk(probs, s, dim=1)
    ids = tokens.gather(1, where)
    ids = torch.where(top > 0, ids, torch.zeros_like(ids))
    out_ids = np.zeros((len(ids), support), dtype=np.int32)
    out_p = np.zeros((len(ids), support), dtype=np.float16)
    out_ids[:, :s], out_p[:, :s] = ids.numpy(), top.numpy()
    return out_ids, out_p


def choose_temperature(
    index, keys: np.ndarray, values: np.ndarray, *, k: int, vocab_size: int, sample: int = 2048, seed: int = 0
) -> float:
    """T maximising the leave-one-out likelihood of the true next token under p_kNN (smoothed with
    1 % uniform so a miss is finite), on a sample of rows, over a grid around the distance scale."""
    n = len(keys)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))
    dists, ids = search(index, keys, rows, k)
    scale = float(np.median(np.clip(dists[:, 1:], 0, None))) or 1.0
    truth = torch.as_tensor(np.asarray(values)[rows], dtype=torch.int64)
    best, best_ll = scale, -math.inf
    for t in scale * 2.0 ** np.arange(-8, 5):
        tokens, probs = knn_sparse(dists, ids, rows, values, k=k, temperature=float(t))
        p_true = (probs * (tokens == truth[:, None])).sum(1)
        ll = torch.log(0.99 * p_true + 0.01 / vocab_size).mean().item()
        if ll > best_ll:
            best, best_ll = float(t), ll
    return float(f"{best:.6g}")


def create_targets(out: Path, n: int, support: int) -> None:
    """The empty (N, S) ids/probs files every process then fills its own rows of (idempotent)."""
    if not (out / "ids.npy").exists():
        np.lib.format.open_memmap(out / "ids.npy", mode="w+", dtype=np.int32, shape=(n, support)).flush()
        np.lib.format.open_memmap(out / "probs.npy", mode="w+", dtype=np.float16, shape=(n, support)).flush()


def build_targets(
    index, keys: np.ndarray, values: np.ndarray, out: Path, *, k: int, temperature: float, vocab_size: int,
    support: int, batch_size: int, progress: Callable[[int], None] | None = None, rank: int = 0, world_size: int = 1,
) -> dict[str, float]:
    """Write ids.npy (N, S) int32 and probs.npy (N, S) float16 into `out`, resumable by batches.

    With several processes each takes every world_size-th batch of rows (its own progress file);
    the batches are the same as a single process's, so the targets are the same. Returns the
    mean effective number of neighbours and of tokens (exp of entropy) over this process's rows;
    its sums stay in its progress file for merge_stats."""
    n = len(keys)
    s = min(support, vocab_size)
    create_targets(out, n, s)  # a single process; several: process 0 made them before the barrier
    out_ids = np.load(out / "ids.npy", mmap_mode="r+")
    out_probs = np.load(out / "probs.npy", mmap_mode="r+")
    progress_path = out / ("progress.json" if world_size == 1 else f"progress-{rank}-of-{world_size}.json")
    state = json.loads(progress_path.read_text()) if progress_path.exists() else {"rows_done": 0}
    done, stats = state["rows_done"], state.get("stats", {})
    mine = range(rank * batch_size, n, world_size * batch_size)  # first row of each batch of ours
    todo = [b for b in mine if b >= done]
    if progress is not None and len(mine) > len(todo):
        progress(sum(min(batch_size, n - b) for b in mine if b < done))
    values_ram = np.asarray(values)
    for start in todo:
        rows = np.arange(start, min(start + batch_size, n))
        dists, ids = search(index, keys, rows, k)
        tokens, probs = knn_sparse(dists, ids, rows, values_ram, k=k, temperature=temperature, stats=stats)
        out_ids[rows[0] : rows[-1] + 1], out_probs[rows[0] : rows[-1] + 1] = sparsify(tokens, probs, s)
        out_ids.flush()
        out_probs.flush()
        for array in (keys, out_ids, out_probs):  # read or written and flushed: out of this process's RSS
            release_rows(array, int(rows[0]), int(rows[-1] + 1))
        atomic_write_json(progress_path, {"rows_done": int(rows[-1] + 1), "stats": stats})
        if progress is not None:
            progress(len(rows))
    return effective_counts(stats)


def merge_stats(out: Path, world_size: int) -> dict[str, float]:
    """effective_counts over every process's rows, from their progress files."""
    total: dict[str, float] = {}
    for rank in range(world_size):
        for key, value in json.loads((out / f"progress-{rank}-of-{world_size}.json").read_text())["stats"].items():
            total[key] = total.get(key, 0.0) + value
    return effective_counts(total)


def open_targets(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(folder / "ids.npy", mmap_mode="r"), np.load(folder / "probs.npy", mmap_mode="r")
