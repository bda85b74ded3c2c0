"""Index choice: exact while small, IVF above a size, IVF-PQ above the memory budget; nprobe sized to k."""

from __future__ import annotations

import numpy as np

import faiss  # noqa: F401  (a missing dependency must fail, not skip)

from train_helpers import single_thread_fixture  # noqa: E402

from memreg.train.index import build_index, choose_factory, load_index, set_nprobe  # noqa: E402

_one_thread = single_thread_fixture()


def test_auto_choice():
    assert choose_factory(10_000, 256, memory_budget_mb=4096, flat_max_keys=50_000) == "Flat"
    assert choose_factory(300_000, 256, memory_budget_mb=4096, flat_max_keys=50_000) == "IVF2048,Flat"
    assert choose_factory(5_000_000, 384, memory_budget_mb=1024, flat_max_keys=50_000) == "IVF4096,PQ64"
    assert choose_factory(5_000_000, 100, memory_budget_mb=1024, flat_max_keys=50_000) == "IVF4096,PQ50"


def test_ivf_built_in_chunks_finds_exact_neighbours(tmp_path, monkeypatch):
    import memreg.train.index as index_mod

    monkeypatch.setattr(index_mod, "ADD_CHUNK", 1000)
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(5000, 16)).astype(np.float16)
    build_index(keys, "IVF16,Flat", tmp_path / "i.faiss")
    index = load_index(tmp_path / "i.faiss")
    assert index.ntotal == 5000
    assert set_nprobe(index, 16, k=10) == 16  # all lists: exact
    _, ids = index.search(keys[:50].astype(np.float32), 1)
    assert (ids[:, 0] == np.arange(50)).all()
    assert set_nprobe(index, None, k=1000) >= 2 * 1000 // (5000 // 16)
    flat = tmp_path / "f.faiss"
    build_index(keys, "Flat", flat)
    assert set_nprobe(load_index(flat), None, k=10) is None
