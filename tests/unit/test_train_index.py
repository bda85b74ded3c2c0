"""Index choice: exact while small, IVF above a size, IVF-PQ above the memory budget; nprobe sized to k."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import faiss  # noqa: F401  (a missing dependency must fail, not skip)

from train_helpers import single_thread_fixture  # noqa: E402

from memreg.train.errors import InvalidTrainSettingError  # noqa: E402
from memreg.train.index import build_index, choose_factory, choose_on_disk, load_index, set_nprobe  # noqa: E402

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


def _keys_file(tmp_path, n: int = 5000, dim: int = 16) -> np.ndarray:
    """Keys as the pipeline holds them: float16 in a memory-mapped .npy file."""
    keys = np.lib.format.open_memmap(tmp_path / "keys.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    keys[:] = np.random.default_rng(0).normal(size=(n, dim))
    keys.flush()
    return np.load(tmp_path / "keys.npy", mmap_mode="r")


@pytest.mark.slow  # trains a faiss index per factory
@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,PQ4"])
def test_on_disk_lists_give_the_neighbours_of_the_index_in_memory(tmp_path, monkeypatch, capfd, factory):
    import memreg.train.index as index_mod

    monkeypatch.setattr(index_mod, "ADD_CHUNK", 700)
    monkeypatch.setattr(index_mod, "ON_DISK_SHARD_BYTES", 2000 * (16 * 4 + 8))  # 3 shards of <= 2000 keys
    keys = _keys_file(tmp_path)
    (tmp_path / "ram").mkdir()
    (tmp_path / "disk").mkdir()
    build_index(keys, factory, tmp_path / "ram" / "index.faiss")
    build_index(keys, factory, tmp_path / "disk" / "index.faiss", on_disk=True)
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["index.faiss", "index.ivfdata"]  # shards gone
    shutil.move(tmp_path / "disk", tmp_path / "moved")  # the lists are found beside the index, wherever it is
    ram, disk = load_index(tmp_path / "ram" / "index.faiss"), load_index(tmp_path / "moved" / "index.faiss")
    assert disk.ntotal == ram.ntotal == len(keys)
    for index in (ram, disk):
        set_nprobe(index, 4, k=10)
    q = np.ascontiguousarray(keys[::97], dtype=np.float32)
    d_ram, i_ram = ram.search(q, 10)
    d_disk, i_disk = disk.search(q, 10)
    np.testing.assert_array_equal(i_disk, i_ram)
    np.testing.assert_array_equal(d_disk, d_ram)
    assert capfd.readouterr().out == ""  # faiss's prints about the lists file went to stderr


def test_on_disk_choice_follows_the_memory_budget():
    # IVF1024,Flat over 1 M keys of 256 dims: 1 M x (1024 + 8) bytes of lists
    assert choose_on_disk("IVF1024,Flat", 1_000_000, 256, memory_budget_mb=4096, asked=None) is False
    assert choose_on_disk("IVF1024,Flat", 1_000_000, 256, memory_budget_mb=512, asked=None) is True
    assert choose_on_disk("IVF1024,Flat", 1_000_000, 256, memory_budget_mb=512, asked=False) is False
    assert choose_on_disk("IVF64,PQ8", 1000, 16, memory_budget_mb=4096, asked=True) is True
    assert choose_on_disk("Flat", 10**9, 256, memory_budget_mb=1, asked=None) is False  # no lists to move
    with pytest.raises(InvalidTrainSettingError, match="needs an IVF index"):
        choose_on_disk("Flat", 1000, 16, memory_budget_mb=4096, asked=True)


def test_training_sample_is_gathered_span_by_span(tmp_path, monkeypatch):
    import memreg.train.index as index_mod

    keys = _keys_file(tmp_path, n=3000)
    rows = np.sort(np.random.default_rng(1).choice(3000, size=400, replace=False))
    monkeypatch.setattr(index_mod, "SAMPLE_SPAN_BYTES", 7 * keys.strides[0] + 5)  # spans of 7 rows
    np.testing.assert_array_equal(index_mod._gather(keys, rows), keys[rows].astype(np.float32))
    np.testing.assert_array_equal(index_mod._gather(keys, np.array([0, 2999])), keys[[0, 2999]].astype(np.float32))
