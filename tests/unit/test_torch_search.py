"""The torch exact search (memreg train --search torch) against faiss's IndexFlatL2, and the IVF
nprobe chosen by measured recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import faiss

from train_helpers import single_thread_fixture  # noqa: E402

from memreg.train.index import build_index, load_index, recall_at_k, tune_nprobe  # noqa: E402
from memreg.train.knn import build_targets, open_targets  # noqa: E402
from memreg.train.torch_search import TorchFlatIndex, resolve_search  # noqa: E402

_one_thread = single_thread_fixture()


def _flat(keys: np.ndarray):
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(np.ascontiguousarray(keys, dtype=np.float32))
    return index


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 400), dim=st.integers(1, 24), k=st.integers(1, 40), block=st.integers(1, 128),
       seed=st.integers(0, 2**16))
def test_same_neighbours_as_index_flat_l2(n, dim, k, block, seed):
    # float16 keys as the datastore stores them; continuous random values are tie-free
    keys = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float16)
    q = keys[: min(n, 17)].astype(np.float32)
    exact = np.sort(((q[:, None, :].astype(np.float64) - keys[None].astype(np.float64)) ** 2).sum(-1), axis=1)
    assume(bool((np.diff(exact[:, : k + 1], axis=1) > 1e-3).all()))  # tie-free: the order is defined
    want_d, want_i = _flat(keys).search(q, k)
    got_d, got_i = TorchFlatIndex(keys, block_rows=block).search(q, k)
    assert got_i.dtype == np.int64 and got_d.dtype == np.float32
    np.testing.assert_array_equal(got_i, want_i)  # k > n: -1 ids where faiss has them
    finite = want_i >= 0
    np.testing.assert_allclose(got_d[finite], want_d[finite], rtol=1e-4, atol=1e-3)
    assert np.isinf(got_d[~finite]).all()


def test_half_precision_keys_on_the_device_give_float32_distances():
    keys = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float16)
    q = keys[:5].astype(np.float32)
    got_d, got_i = TorchFlatIndex(keys, block_rows=64).search(q, 3)
    index = TorchFlatIndex.__new__(TorchFlatIndex)  # the GPU path, exercised on CPU: keys uploaded as bfloat16
    index.device, index.ntotal, index.d, index.block_rows = torch.device("cpu"), 300, 8, 64
    index._keys, index._on_device = torch.from_numpy(keys.astype(np.float32)).to(torch.bfloat16), True
    index._norms = [index._block(s).square().sum(1) for s in range(0, 300, 64)]
    d_bf, i_bf = index.search(q, 3)
    assert d_bf.dtype == np.float32
    assert (i_bf[:, 0] == np.arange(5)).all() and (got_i[:, 0] == np.arange(5)).all()


def test_kNN_targets_equal_with_either_search(tmp_path):
    rng = np.random.default_rng(2)
    keys = rng.normal(size=(600, 12)).astype(np.float16)
    values = rng.integers(0, 50, size=600).astype(np.int32)
    out = {}
    for name, index in (("faiss", _flat(keys)), ("torch", TorchFlatIndex(keys, block_rows=100))):
        folder = tmp_path / name
        folder.mkdir()
        stats = build_targets(index, keys, values, folder, k=16, temperature=5.0, vocab_size=50, support=8,
                              batch_size=128)
        out[name] = (*open_targets(folder), stats)
    np.testing.assert_array_equal(out["torch"][0], out["faiss"][0])  # same tokens in the same slots
    np.testing.assert_allclose(out["torch"][1].astype(np.float32), out["faiss"][1].astype(np.float32), atol=2e-3)
    assert out["torch"][2]["effective_neighbours"] == pytest.approx(out["faiss"][2]["effective_neighbours"], rel=1e-3)


def test_auto_search_is_torch_only_on_cuda():
    assert resolve_search("auto", "cpu") == "faiss"
    assert resolve_search("auto", torch.device("cuda", 0)) == "torch"
    assert resolve_search("torch", "cpu") == "torch" and resolve_search("faiss", "cuda") == "faiss"


def test_nprobe_is_tuned_to_the_recall_goal(tmp_path):
    rng = np.random.default_rng(3)
    keys = rng.normal(size=(8000, 16)).astype(np.float16)
    build_index(keys, "IVF64,Flat", tmp_path / "i.faiss")
    index = load_index(tmp_path / "i.faiss")
    exact = TorchFlatIndex(keys)
    rows = np.arange(0, 8000, 125)
    nprobe, recall = tune_nprobe(index, keys, k=64, goal=0.9)
    assert recall >= 0.9 and nprobe in (8, 16, 32, 64)
    if nprobe > 8:  # the next smaller power of two misses the goal on the same sample
        faiss.extract_index_ivf(index).nprobe = nprobe // 2
        sample = np.sort(np.random.default_rng(0).choice(8000, size=64, replace=False))
        assert recall_at_k(index, exact, keys, sample, 64) < 0.9
    faiss.extract_index_ivf(index).nprobe = 64  # every list: IVF-Flat is exact
    assert recall_at_k(index, exact, keys, rows, 64) == 1.0
    pq = tmp_path / "pq.faiss"
    build_index(keys, "IVF16,PQ4", pq)
    nprobe, recall = tune_nprobe(load_index(pq), keys, k=64, goal=0.99)
    assert nprobe == 16 and recall < 0.99  # PQ codes cap recall: every list searched, goal reported missed
    assert tune_nprobe(_flat(keys), keys, k=8, goal=0.9) == (None, 1.0)
