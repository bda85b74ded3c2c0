"""kNN targets against a brute-force numpy computation: self-exclusion by id, ties from duplicated keys."""

from __future__ import annotations

import numpy as np
import pytest

import faiss  # noqa: F401  (a missing dependency must fail, not skip)

from train_helpers import single_thread_fixture  # noqa: E402
from memreg.train.knn import build_targets, choose_temperature, knn_distribution, open_targets, search  # noqa: E402

_one_thread = single_thread_fixture()


def brute_force(keys: np.ndarray, values: np.ndarray, k: int, temperature: float, vocab: int) -> np.ndarray:
    x = keys.astype(np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # (N, N) squared L2
    n = len(x)
    out = np.zeros((n, vocab))
    for q in range(n):
        others = np.array([j for j in range(n) if j != q])
        nearest = others[np.argsort(d[q, others], kind="stable")[:k]]
        w = np.exp(-(d[q, nearest] - d[q, nearest].min()) / temperature)
        w /= w.sum()
        np.add.at(out[q], values[nearest], w)
    return out


@pytest.fixture
def datastore():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(60, 8)).astype(np.float16)
    keys[10] = keys[11] = keys[12]  # duplicated keys: ties at distance 0, with different values
    keys[40] = keys[41]
    values = rng.integers(0, 20, size=60).astype(np.int32)
    values[10], values[11], values[12] = 3, 7, 9
    return keys, values


def flat(keys: np.ndarray):
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(keys.astype(np.float32))
    return index


def test_all_neighbours_match_brute_force(datastore):
    keys, values = datastore
    n, k, t = len(keys), len(keys) - 1, 2.0  # every other row: the neighbour set has no ambiguity
    rows = np.arange(n)
    dists, ids = search(flat(keys), keys, rows, k)
    p = knn_distribution(dists, ids, rows, values, k=k, temperature=t, vocab_size=20).numpy()
    np.testing.assert_allclose(p, brute_force(keys, values, k, t, 20), atol=2e-5)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)


def test_small_k_matches_brute_force(datastore):
    keys, values = datastore
    rows = np.arange(len(keys))
    dists, ids = search(flat(keys), keys, rows, 5)
    p = knn_distribution(dists, ids, rows, values, k=5, temperature=0.5, vocab_size=20).numpy()
    want = brute_force(keys, values, 5, 0.5, 20)
    # rows whose 5th and 6th neighbours tie are ambiguous; there are none in this draw except exact duplicates
    np.testing.assert_allclose(p, want, atol=2e-4)


def test_self_is_removed_by_id_even_when_a_duplicate_comes_first(datastore):
    keys, values = datastore
    # hand faiss-like results where the duplicate (row 11) is listed before the query (row 10)
    dists = np.array([[0.0, 0.0, 0.0, 4.0]], dtype=np.float32)
    ids = np.array([[11, 10, 12, 5]])
    p = knn_distribution(dists, ids, np.array([10]), values, k=3, temperature=1.0, vocab_size=20).numpy()[0]
    assert p[values[10]] == 0  # the query's own value (3) must not leak in
    assert p[7] == pytest.approx(p[9]) and p[7] > p[values[5]] > 0
    # "drop the first result" (the reference code) would have dropped row 11 and kept the query itself
    assert p.sum() == pytest.approx(1.0)


def test_unsorted_and_missing_results(datastore):
    _, values = datastore
    dists = np.array([[9.0, 1.0, -1.0, 4.0]], dtype=np.float32)  # unsorted; -1 = faiss "no result"
    ids = np.array([[5, 6, -1, 7]])
    p = knn_distribution(dists, ids, np.array([0]), values, k=2, temperature=1.0, vocab_size=20).numpy()[0]
    w6, w7 = np.exp(-1.0), np.exp(-4.0)
    want = np.zeros(20)
    want[values[6]] += w6 / (w6 + w7)
    want[values[7]] += w7 / (w6 + w7)
    np.testing.assert_allclose(p, want, atol=1e-12)


def test_build_targets_sparse_and_resumable(tmp_path, datastore):
    keys, values = datastore
    index = flat(keys)
    build_targets(index, keys, values, tmp_path, k=10, temperature=1.5, vocab_size=20, support=20, batch_size=7)
    ids, probs = open_targets(tmp_path)
    assert ids.dtype == np.int32 and probs.dtype == np.float16 and ids.shape == (60, 20)
    dense = np.zeros((60, 20))
    for r in range(60):
        np.add.at(dense[r], ids[r], probs[r].astype(np.float64))
    np.testing.assert_allclose(dense, brute_force(keys, values, 10, 1.5, 20), atol=2e-3)
    # a second call finds every row done and leaves the files as they are
    before = probs.copy()
    build_targets(index, keys, values, tmp_path, k=10, temperature=1.5, vocab_size=20, support=20, batch_size=7)
    np.testing.assert_array_equal(open_targets(tmp_path)[1], before)


def test_choose_temperature_is_positive_and_deterministic(datastore):
    keys, values = datastore
    a = choose_temperature(flat(keys), keys, values, k=10, vocab_size=20, sample=60)
    assert a > 0 and a == choose_temperature(flat(keys), keys, values, k=10, vocab_size=20, sample=60)
