"""Near-duplicate documents: word 8-gram shingles, MinHash + LSH banding, exact verification, clusters.

`split_documents` (corpus.py) holds out whole clusters, so that no held-out document has a near-copy
in training; `split_report` measures what is left: the share of the held-out 8-grams that also occur
in the training text (boilerplate shared by many documents survives any document-level split).

Numpy only, on purpose: datasketch would add a dependency for the few dozen lines of MinHash and
banding below, and its LSH index hands back unverified candidates and whole buckets; the parts that
matter here are ours anyway: exact verification, and a bound on the pairs of a boilerplate bucket
(a licence header shared by thousands of files) so the cost stays linear in the documents.

Pipeline, for texts of N documents:
  words     lowercase `\\w+` runs; each word -> 64-bit blake2b (stable across processes, unlike hash())
  shingles  (positions,) uint64: polynomial hash of n consecutive word hashes, then a splitmix64 mix
  sets      sorted unique shingles per document; identical sets (identical texts) are merged first
  minhash   (N, 126) uint64: min over a document's set of (a*x + b) mod 2^64, a odd (a bijection)
  LSH       42 bands of 3 rows; documents whose band agrees on all 3 rows are candidate pairs
  prefilter signature agreement (vectorised) estimates the Jaccard; only pairs that could reach the
            threshold are verified exactly
  verify    exact Jaccard |A & B| / |A | B| >= threshold, then union-find into clusters

Jaccard, not containment |A & B| / min(|A|, |B|). Containment would also catch a licence quoted
after a header longer than itself (a licence behind a header up to its own size has Jaccard >= 0.5
and is caught either way), but it chains: a short boilerplate document is "contained" in hundreds
of unrelated longer ones and glues them into one cluster. With containment >= 0.5 (and 1-row bands,
so that nearly every contained pair is a candidate), 2,767 of the 2,912 .py files of `transformers`
(a 20-line lazy-import `__init__.py` is half Apache header) and 650 of the 727 Debian copyright
files + licences formed one cluster, leaving next to nothing to hold out. Jaccard is also what
MinHash estimates, so the LSH bound below is about the measure we verify. Leakage that no pairwise
measure sees (a held-out text assembled from passages of several training texts) is what
`split_report`'s eval_8gram_overlap reports.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from memreg.train.corpus import Document

_WORD = re.compile(r"\w+")
NGRAM = 8  # word n-gram length of the shingles
THRESHOLD = 0.5  # Jaccard at or above which two documents are near-duplicates
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial base for n consecutive word hashes
_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)

# LSH: a pair with Jaccard s agrees on all ROWS values of one band with probability s^ROWS (MinHash),
# so it is missed (in no band's bucket) with probability (1 - s^ROWS)^BANDS. With ~128 hashes:
#   rows x bands   s = 0.8     s = 0.7     s = 0.6     s = 0.5     s = 0.3 (missed: good)
#   5 x 25         4.9e-5      1.0e-2      0.13        0.45        0.94
#   4 x 32         4.7e-8      1.5e-4      1.2e-2      0.13        0.77
#   3 x 42         8.2e-14     2.2e-8      3.6e-5      3.7e-3      0.32
# 4 x 32 already meets "miss < 1e-6 at 0.8"; 3 x 42 also finds pairs at the 0.5 threshold (a split
# with 4 x 32 left 1-5 held-out Debian copyright files with a Jaccard >= 0.5 partner in training,
# 3 x 42 none), for ~3x more candidates, which the vectorised prefilter absorbs.
ROWS, BANDS = 3, 42
PERMS = ROWS * BANDS
_BUCKET_ALL_PAIRS = 64  # a band bucket up to this size: all its pairs are candidates
_BUCKET_WINDOW = 16  # a bigger one (boilerplate): each member with its next 16 in a seeded order
_SIGMAS = 3.0  # the prefilter drops a pair only when its Jaccard estimate is 3 standard errors short
_CHUNK = 8192  # shingles per (PERMS, chunk) block when computing signatures: 8 MiB of uint64


# ------------------------------------------------------------------------------------------ shingles
def shingles(text: str, n: int = NGRAM) -> np.ndarray:
    """Sorted unique uint64 hashes of the word n-grams of `text` (words: lowercase `\\w+` runs).

    A text of fewer than n words gives one shingle of its whole word sequence; one without words, none.
    The values are the same in every process and on every platform (no salted `hash()`)."""
    return _sorted_unique(_positions(text, n, {}))


def _positions(text: str, n: int, vocab: dict[str, int]) -> np.ndarray:
    """One shingle per n-gram position, in text order, (max(words - n + 1, 1),) uint64; `vocab` caches
    word hashes across the texts of one call."""
    if n < 1:
        raise ValueError(f"n={n} is not a word n-gram length: use n >= 1 (8 by default)")
    words = _WORD.findall(text.lower())
    if not words:
        return np.empty(0, dtype=np.uint64)
    for w in set(words).difference(vocab):
        digest = hashlib.blake2b(w.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        vocab[w] = int.from_bytes(digest, "little")
    codes = np.fromiter(map(vocab.__getitem__, words), dtype=np.uint64, count=len(words))
    k = min(n, len(words))
    m = len(words) - k + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):  # h_i = sum_j w_{i+j} * BASE^(k-1-j) mod 2^64
            h = h * _BASE + codes[j : j + m]
    return _mix(h)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: the polynomial is linear in the word hashes, MinHash wants random-looking
    values."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


# ------------------------------------------------------------------------------------------ overlap
def ngram_overlap(train_texts: Sequence[str], eval_texts: Sequence[str], n: int = NGRAM) -> float:
    """Share of the eval texts' n-gram positions (with multiplicity) whose shingle occurs anywhere in
    the training texts; 0.0 when the eval texts have no n-gram."""
    vocab: dict[str, int] = {}
    return _overlap([_positions(t, n, vocab) for t in train_texts], [_positions(t, n, vocab) for t in eval_texts])


def _overlap(train_positions: list[np.ndarray], eval_positions: list[np.ndarray]) -> float:
    ev = np.concatenate([np.empty(0, np.uint64), *eval_positions])
    if not len(ev):
        return 0.0
    seen = _sorted_unique(np.concatenate([np.empty(0, np.uint64), *train_positions]))
    if not len(seen):
        return 0.0
    at = np.minimum(np.searchsorted(seen, ev), len(seen) - 1)
    return float(np.count_nonzero(seen[at] == ev)) / len(ev)


# ------------------------------------------------------------------------------------------ clusters
def near_duplicate_clusters(
    texts: Sequence[str], *, threshold: float = THRESHOLD, n: int = NGRAM, seed: int = 0
) -> list[int]:
    """Cluster id per text (0, 1, ... in order of each cluster's first text): texts linked by a chain of
    pairs whose word n-gram sets have Jaccard >= threshold share a cluster; identical texts always do.

    LSH proposes a pair with Jaccard >= 0.8 with probability > 1 - 1e-13, one at 0.5 with > 0.996 (the
    table above, for min-wise independent hashes; in a band bucket of more than 64 documents only
    neighbours are paired, see `_candidates`). `seed` picks the hash functions; the result is the same
    in every process. 2,000 documents of 5 kB take about a second, 50 MB of text about 5."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold} is not a Jaccard similarity: use 0 < threshold <= 1 (0.5 by default)")
    vocab: dict[str, int] = {}
    sets = [_sorted_unique(_positions(t, n, vocab)) for t in texts]
    return _clusters(sets, texts, threshold=threshold, seed=seed)


def _clusters(sets: list[np.ndarray], texts: Sequence[str], *, threshold: float, seed: int) -> list[int]:
    parent = list(range(len(sets)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    # identical shingle sets (identical texts among them) first; texts without words only when equal
    first: dict[bytes, int] = {}
    for i, s in enumerate(sets):
        key = b"s" + s.tobytes() if len(s) else b"t" + texts[i].encode("utf-8", "surrogatepass")
        union(first.setdefault(hashlib.blake2b(key, digest_size=16).digest(), i), i)
    reps = np.array([i for i in range(len(sets)) if parent[i] == i and len(sets[i])], dtype=np.int64)
    if len(reps) >= 2:
        rep_sets = [sets[i] for i in reps]
        rng = np.random.default_rng(seed)
        sig = _signatures(rep_sets, rng)  # (R, PERMS)
        pairs = _candidates(sig, rng.permutation(len(reps)))  # (C, 2) indices into reps
        for a, b in _prefilter(sig, pairs, threshold):
            ia, ib = int(reps[a]), int(reps[b])
            if find(ia) != find(ib) and _jaccard(rep_sets[a], rep_sets[b]) >= threshold:
                union(ia, ib)
    roots = [find(i) for i in range(len(sets))]
    ids: dict[int, int] = {}
    return [ids.setdefault(r, len(ids)) for r in roots]


def _signatures(sets: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """(R, PERMS) uint64 MinHash signatures of non-empty sets: min over the set of (a*x + b) mod 2^64."""
    a = rng.integers(0, 2**64, size=PERMS, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2**64, size=PERMS, dtype=np.uint64, endpoint=False)
    flat = np.concatenate(sets)
    owner = np.repeat(np.arange(len(sets), dtype=np.int32), [len(s) for s in sets])
    sig = np.full((PERMS, len(sets)), _ONES, dtype=np.uint64)
    buf = np.empty((PERMS, _CHUNK), dtype=np.uint64)  # (PERMS, chunk): reduceat along the last axis is fast
    with np.errstate(over="ignore"):
        for lo in range(0, len(flat), _CHUNK):
            x, o = flat[lo : lo + _CHUNK], owner[lo : lo + _CHUNK]
            v = buf[:, : len(x)]
            np.multiply(a[:, None], x, out=v)
            np.add(v, b[:, None], out=v)
            starts = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])
            rows = o[starts]
            sig[:, rows] = np.minimum(sig[:, rows], np.minimum.reduceat(v, starts, axis=1))
    return np.ascontiguousarray(sig.T)


def _candidates(sig: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """(C, 2) unique pairs i < j that agree on every row of at least one band. A bucket of more than
    _BUCKET_ALL_PAIRS documents (boilerplate shared by many) pairs each member only with the next
    _BUCKET_WINDOW in the seeded `rank` order: enough to chain true near-copies into one cluster,
    linear instead of quadratic in the bucket size."""
    r = len(sig)
    by_rank = np.argsort(rank)  # documents in rank order: a stable sort keeps that order in each bucket
    with np.errstate(over="ignore"):
        keys = sig[by_rank].reshape(r, BANDS, ROWS)
        band_key = keys[:, :, 0].copy()
        for j in range(1, ROWS):
            band_key = band_key * _BASE + keys[:, :, j]
    found: list[np.ndarray] = []
    for band in range(BANDS):
        order = np.argsort(band_key[:, band], kind="stable")
        k = band_key[order, band]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        lengths = np.diff(np.r_[starts, r])
        end = np.repeat(starts + lengths, lengths)  # (r,) end of each sorted position's bucket
        reach = np.where(np.repeat(lengths, lengths) <= _BUCKET_ALL_PAIRS, end, np.arange(r) + _BUCKET_WINDOW + 1)
        reach = np.minimum(reach, end)  # (r,) pair position p with p+1 .. reach-1
        live = np.flatnonzero(reach - np.arange(r) >= 2)
        d = 1
        while len(live):  # pairs (p, p + d) of one bucket, for growing offsets d
            found.append(np.stack([order[live], order[live + d]], axis=1))
            d += 1
            live = live[live + d < reach[live]]
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.sort(by_rank[np.concatenate(found)], axis=1)
    code = _sorted_unique(pairs[:, 0].astype(np.int64) * r + pairs[:, 1])
    return np.stack([code // r, code % r], axis=1)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2.4's np.unique (a hash table) is ~8x slower on these uint64 arrays."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def _prefilter(sig: np.ndarray, pairs: np.ndarray, threshold: float) -> list[list[int]]:
    """Candidate pairs whose Jaccard could reach `threshold`, likeliest first. The share of equal
    signature entries estimates it with standard error sqrt(J (1 - J) / PERMS). Vectorised, in blocks."""
    kept, scores = [], []
    for lo in range(0, len(pairs), 1 << 14):
        p = pairs[lo : lo + (1 << 14)]  # (B, 2)
        j = (sig[p[:, 0]] == sig[p[:, 1]]).mean(axis=1)  # (B,)
        could = j + _SIGMAS * np.sqrt(np.maximum(j * (1 - j), 1.0 / PERMS) / PERMS) >= threshold
        kept.append(p[could])
        scores.append(j[could])
    if not kept:
        return []
    p, s = np.concatenate(kept), np.concatenate(scores)
    return p[np.lexsort((p[:, 1], p[:, 0], -s))].tolist()


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A & B| / |A | B| of two sorted unique arrays: binary search of the smaller in the larger."""
    if len(a) > len(b):
        a, b = b, a
    at = np.minimum(np.searchsorted(b, a), len(b) - 1)
    inter = int(np.count_nonzero(b[at] == a))
    return inter / (len(a) + len(b) - inter)


# ------------------------------------------------------------------------------------------ report
def split_report(documents: Sequence[Document], train_idx: Sequence[int], eval_idx: Sequence[int], *,
                 labels: Sequence[int] | None = None) -> dict[str, Any]:
    """What a train/eval split leaves: `eval_8gram_overlap` (share of the held-out 8-gram positions
    that occur in the training documents), the near-duplicate `clusters` of the whole corpus, the
    `largest_cluster`'s size and how many documents have a near-copy (`near_duplicate_documents`).
    The clusters are `split_documents`'s (default threshold, n and seed): pass its `labels` to
    reuse them, or they are computed again."""
    texts = [d.text for d in documents]
    vocab: dict[str, int] = {}
    positions = [_positions(t, NGRAM, vocab) for t in texts]
    if labels is None:
        labels = _clusters([_sorted_unique(p) for p in positions], texts, threshold=THRESHOLD, seed=0)
    counts = np.bincount(np.asarray(labels, dtype=np.int64)) if labels else np.zeros(0, dtype=np.int64)
    return {
        "eval_8gram_overlap": round(_overlap([positions[i] for i in train_idx], [positions[i] for i in eval_idx]), 6),
        "clusters": int(len(counts)),
        "largest_cluster": int(counts.max()) if len(counts) else 0,
        "near_duplicate_documents": int(counts[counts >= 2].sum()),
    }
