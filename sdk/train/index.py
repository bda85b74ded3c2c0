"""Stage 3: the faiss index over the datastore keys.

"auto" picks exact `Flat` (IndexFlatL2) while the float32 keys fit the memory budget and are few
enough for an exact all-pairs search to finish quickly (on 2 CPU cores, 100 k keys of 256 dims with
k = 1024 take minutes: the search is quadratic); `IVF<n>,Flat` above that while they still
fit; `IVF<n>,PQ<m>` (the paper: 4096 centroids, 64-byte codes) beyond the budget. Any faiss factory
string overrides it. Keys are never loaded all at once: IVF quantizers are trained on a sample and
the index is filled in chunks (each chunk's pages of the memory-mapped keys leave the RSS once added).

An IVF index's inverted lists can live on disk (`on_disk`, `memreg train --index-on-disk`; by default
only when they would not fit the memory budget): faiss `OnDiskInvertedLists` in `index.ivfdata` next
to `index.faiss`, memory-mapped when searched. The index is filled in shards of at most
ON_DISK_SHARD_BYTES of lists each (in RAM, then written and mapped back), merged into the lists file
at its exact size; the shard files are deleted after the merge (so the disk briefly holds the lists twice).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from memreg.core.fsutil import atomic_path
from memreg.train.datastore import release_rows
from memreg.core.errors import InvalidTrainSettingError

ADD_CHUNK = 65_536
TRAIN_POINTS_PER_CENTROID = 40  # faiss warns below 39
ON_DISK_SHARD_BYTES = 2**30  # inverted lists held in RAM at once while an on-disk index is filled
SAMPLE_SPAN_BYTES = 2**28  # keys mapped at once while the training sample is gathered


def choose_factory(n: int, dim: int, *, memory_budget_mb: int, flat_max_keys: int) -> str:
    fits = n * dim * 4 <= memory_budget_mb * 2**20
    if fits and n <= flat_max_keys:
        return "Flat"
    nlist = int(min(4096, max(16, 2 ** round(math.log2(4 * math.sqrt(n))))))
    if fits:
        return f"IVF{nlist},Flat"
    m = max(d for d in range(1, min(64, dim) + 1) if dim % d == 0)
    return f"IVF{nlist},PQ{m}"


def list_bytes(factory: str, n: int, dim: int) -> int | None:
    """Bytes of the inverted lists of IVF index `factory` over n keys (codes and 8-byte ids); None if not IVF."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(faiss.index_factory(dim, factory, faiss.METRIC_L2))
    except RuntimeError:  # not an IVF index (or not a factory string: build_index says so)
        return None
    return n * (ivf.code_size + 8)


def choose_on_disk(factory: str, n: int, dim: int, *, memory_budget_mb: int, asked: bool | None) -> bool:
    """Inverted lists on disk: as asked (--index-on-disk / --index-in-memory), else (None) when an IVF
    index's lists outgrow the memory budget. Refuses on disk for an index without inverted lists."""
    size = list_bytes(factory, n, dim)
    if asked and size is None:
        raise InvalidTrainSettingError(f"--index-on-disk needs an IVF index (its inverted lists go to disk); "
                                       f"{factory!r} has none: pass e.g. --index IVF1024,Flat, or drop --index-on-disk")
    if asked is not None:
        return bool(asked)
    return size is not None and size > memory_budget_mb * 2**20


def build_index(
    keys: np.ndarray, factory: str, path: Path, *, seed: int = 0, progress: Callable[[int], None] | None = None,
    on_disk: bool = False, times: dict[str, float] | None = None,
) -> None:
    """Train (on a sample) and fill (in chunks) a faiss index over `keys` (N, D), write it to `path`;
    `on_disk`: an IVF index's lists in `path`.ivfdata (see the module's docstring). `times` receives
    the seconds of each phase (train, add, write) and the size of the training sample."""
    import faiss

    n, dim = keys.shape
    times = {} if times is None else times
    t0 = time.perf_counter()
    index = faiss.index_factory(dim, factory, faiss.METRIC_L2)
    times["train_sample"] = 0
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist if "IVF" in factory else 256
        n_sample = min(n, max(nlist * TRAIN_POINTS_PER_CENTROID, 10_000))
        rows = np.sort(np.random.default_rng(seed).choice(n, size=n_sample, replace=False))
        _no_polysemous(index)
        index.train(_gather(keys, rows))
        times["train_sample"] = n_sample
    t1 = time.perf_counter()
    path.with_suffix(".ivfdata").unlink(missing_ok=True)
    if on_disk:
        _fill_on_disk(index, keys, path, progress)
    else:
        _add(index, keys, 0, n, progress)
    t2 = time.perf_counter()
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    times.update(train=t1 - t0, add=t2 - t1, write=time.perf_counter() - t2)


def _gather(keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """keys[rows] (rows sorted) as float32, read one span of SAMPLE_SPAN_BYTES of the keys at a time and
    each span's pages released after: a sample spread over a memory-mapped datastore would otherwise
    map most of it (the kernel maps the pages read ahead around each row)."""
    out = np.empty((len(rows), keys.shape[1]), dtype=np.float32)
    span = max(1, SAMPLE_SPAN_BYTES // max(1, keys.strides[0]))
    bounds = np.searchsorted(rows, np.arange(0, len(keys) + span, span))
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if b > a:
            out[a:b] = keys[rows[a:b]]
            release_rows(keys, i * span, min(len(keys), (i + 1) * span))
    return out


def _no_polysemous(index) -> None:
    """IVF-PQ: skip faiss's polysemous training (on by default in the factory: minutes at 4096 lists).
    It orders the PQ centroids for a Hamming pre-filter that memreg never turns on (polysemous_ht 0),
    so the distances, hence the neighbours, are the same without it."""
    import faiss

    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))  # IndexIVF -> IndexIVFPQ
    except RuntimeError:
        return
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False


def _add(index, keys: np.ndarray, start: int, stop: int, progress: Callable[[int], None] | None,
         with_ids: bool = False) -> None:
    """Add rows [start, stop) in chunks (ids = row numbers), each chunk's key pages released after.
    PQ codes are computed against transposed centroids (faiss's faster path for small sub-vectors:
    about 1.6x at 5 dimensions each; the same codes)."""
    import faiss

    try:
        pq = getattr(faiss.downcast_index(faiss.extract_index_ivf(index)), "pq", None)
    except RuntimeError:  # not IVF
        pq = getattr(faiss.downcast_index(index), "pq", None)
    if pq is not None:
        pq.sync_transposed_centroids()
    for a in range(start, stop, ADD_CHUNK):
        b = min(stop, a + ADD_CHUNK)
        chunk = np.ascontiguousarray(keys[a:b], dtype=np.float32)
        if with_ids:
            index.add_with_ids(chunk, np.arange(a, b, dtype=np.int64))
        else:
            index.add(chunk)
        release_rows(keys, a, b)
        if progress is not None:
            progress(b - a)


def _fill_on_disk(index, keys: np.ndarray, path: Path, progress: Callable[[int], None] | None) -> None:
    """Fill trained IVF `index` with on-disk lists in path.ivfdata: shards of rows built in RAM (all but
    the last written next to `path` and mapped back), then merged at the lists' exact sizes."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    n, per_shard = len(keys), max(ADD_CHUNK, ON_DISK_SHARD_BYTES // (ivf.code_size + 8))
    empty = faiss.serialize_index(index)
    shards, files = [], []
    for i, start in enumerate(range(0, n, per_shard)):
        shard = faiss.deserialize_index(empty)
        _add(shard, keys, start, min(n, start + per_shard), progress, with_ids=True)
        if start + per_shard < n:  # not the last: to disk, read back memory-mapped for the merge
            files.append(path.parent / f"{path.stem}.shard-{i:04d}.faiss")
            faiss.write_index(shard, str(files[-1]))
            shard = faiss.read_index(str(files[-1]), faiss.IO_FLAG_MMAP)
        shards.append(shard)
    lists = faiss.InvertedListsPtrVector()
    for shard in shards:
        lists.push_back(faiss.extract_index_ivf(shard).invlists)
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(path.with_suffix(".ivfdata")))
    with _stdout_to_stderr():  # faiss prints the file's size to the C stdout
        ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False)
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()  # the index owns it now
    index.ntotal = ivf.ntotal = ntotal
    del shards, lists
    for file in files:
        file.unlink()


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """faiss's on-disk lists print to the C stdout: keep `memreg train --json`'s output clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def load_index(path: Path):
    """The index at `path`; its inverted lists memory-mapped from path.ivfdata (the same folder,
    wherever the index was built) when it was built on disk."""
    import faiss

    if not path.with_suffix(".ivfdata").exists():
        return faiss.read_index(str(path))
    with _stdout_to_stderr():  # faiss prints where it found the lists
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)


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
