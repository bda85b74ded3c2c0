"""Stage 3: the faiss index over the datastore keys.

"auto" picks exact `Flat` (IndexFlatL2) while the float32 keys fit the memory budget and are few
enough for an exact all-pairs search to finish quickly (on 2 CPU cores, 100 k keys of 256 dims with
k = 1024 take minutes: the search is quadratic); `IVF<n>,Flat` above that while they still
fit; `IVF<n>,PQ<m>` (the paper: 4096 centroids, 64-byte codes) beyond the budget. Any faiss factory
string overrides it. Keys are never loaded all at once: IVF quantizers are trained on a sample and
the index is filled in chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from memreg.registry.fsutil import atomic_path

ADD_CHUNK = 65_536
TRAIN_POINTS_PER_CENTROID = 40  # faiss warns below 39


def choose_factory(n: int, dim: int, *, memory_budget_mb: int, flat_max_keys: int) -> str:
    fits = n * dim * 4 <= memory_budget_mb * 2**20
    if fits and n <= flat_max_keys:
        return "Flat"
    nlist = int(min(4096, max(16, 2 ** round(math.log2(4 * math.sqrt(n))))))
    if fits:
        return f"IVF{nlist},Flat"
    m = max(d for d in range(1, min(64, dim) + 1) if dim % d == 0)
    return f"IVF{nlist},PQ{m}"


def build_index(
    keys: np.ndarray, factory: str, path: Path, *, seed: int = 0, progress: Callable[[int], None] | None = None
) -> None:
    """Train (on a sample) and fill (in chunks) a faiss index over `keys` (N, D), write it to `path`."""
    import faiss

    n, dim = keys.shape
    index = faiss.index_factory(dim, factory, faiss.METRIC_L2)
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist if "IVF" in factory else 256
        n_sample = min(n, max(nlist * TRAIN_POINTS_PER_CENTROID, 10_000))
        rows = np.sort(np.random.default_rng(seed).choice(n, size=n_sample, replace=False))
        index.train(np.ascontiguousarray(keys[rows], dtype=np.float32))
    for start in range(0, n, ADD_CHUNK):
        chunk = np.ascontiguousarray(keys[start : start + ADD_CHUNK], dtype=np.float32)
        index.add(chunk)
        if progress is not None:
            progress(len(chunk))
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: Path):
    import faiss

    return faiss.read_index(str(path))


def set_nprobe(index, nprobe: int | None, *, k: int) -> int | None:
    """Set an IVF index's nprobe (None: enough lists to hold ~2k candidates, at least 8); returns it."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return None
    if nprobe is None:
        per_list = max(1.0, index.ntotal / ivf.nlist)
        nprobe = max(8, math.ceil(2 * k / per_list))
    ivf.nprobe = min(nprobe, ivf.nlist)
    return int(ivf.nprobe)


def recall_at_k(index, exact, keys: np.ndarray, rows: np.ndarray, k: int) -> float:
    """Mean share of each row's exact k nearest keys that `index` also returns among its k nearest."""
    q = np.ascontiguousarray(keys[rows], dtype=np.float32)
    _, approx = index.search(q, k)
    _, truth = exact.search(q, k)
    return float(np.mean([len(np.intersect1d(a[a >= 0], t[t >= 0])) / max(1, int((t >= 0).sum()))
                          for a, t in zip(approx, truth)]))


def tune_nprobe(index, keys: np.ndarray, *, k: int, goal: float, sample: int = 64, seed: int = 0) -> tuple[int | None, float]:
    """The smallest power-of-two nprobe (from 8) whose recall@k on `sample` datastore rows reaches
    `goal`, measured against an exact search; all lists if none does (PQ codes can cap recall).
    Returns (nprobe, recall); (None, 1.0) for an exact index."""
    import faiss

    from memreg.train.torch_search import TorchFlatIndex

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None, 1.0
    rows = np.sort(np.random.default_rng(seed).choice(len(keys), size=min(sample, len(keys)), replace=False))
    exact = TorchFlatIndex(keys)
    nprobe, recall = min(8, ivf.nlist), 0.0
    while True:
        ivf.nprobe = nprobe
        recall = recall_at_k(index, exact, keys, rows, k)
        if recall >= goal or nprobe >= ivf.nlist:
            return nprobe, recall
        nprobe = min(2 * nprobe, ivf.nlist)
