"""The Store protocol behaves the same on a local folder, memory:// and S3 (moto over HTTP)."""

from __future__ import annotations

import pytest

from memreg.registry.errors import ConcurrentUpdateError
from memreg.registry.store import LocalStore, MemoryStore, S3Store, open_store


def test_backend_class(registry_url):
    store = open_store(registry_url)
    expected = {"s3": S3Store, "memory": MemoryStore}.get(registry_url.split("://")[0], LocalStore)
    assert isinstance(store, expected)


def test_create_is_exclusive(registry_url):
    store = open_store(registry_url)
    store.create("packages/a/1.0.0.json", b"first")
    with pytest.raises(FileExistsError):
        store.create("packages/a/1.0.0.json", b"second")
    assert store.read("packages/a/1.0.0.json") == b"first"


def test_swap_is_compare_and_swap(registry_url):
    store = open_store(registry_url)
    key = "packages/a/tags/stable.json"
    store.swap(key, b"v1", expected=None)
    with pytest.raises(ConcurrentUpdateError):
        store.swap(key, b"v1-again", expected=None)  # must not exist any more
    body, etag = store.read_with_etag(key)
    assert body == b"v1"
    store.swap(key, b"v2", expected=etag)
    with pytest.raises(ConcurrentUpdateError):
        store.swap(key, b"v3", expected=etag)  # stale etag: the v2 writer got there first
    assert store.read(key) == b"v2"


def test_concurrent_swaps_lose_no_update(registry_url):
    """Threads incrementing one counter by compare-and-swap: every increment that reported success
    is in the final value (a swap that succeeded on a stale etag would lose one)."""
    import threading

    store = open_store(registry_url)
    key = "packages/a/tags/counter.json"
    store.swap(key, b"0", expected=None)
    threads, per_thread, landed = 8, 6, []

    def increment() -> None:
        for _ in range(per_thread):
            while True:
                raw, etag = store.read_with_etag(key)
                try:
                    store.swap(key, str(int(raw) + 1).encode(), expected=etag)
                except ConcurrentUpdateError:
                    continue
                landed.append(1)
                break

    workers = [threading.Thread(target=increment) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert len(landed) == threads * per_thread
    assert int(store.read(key)) == threads * per_thread


def test_read_missing_raises_file_not_found(registry_url):
    with pytest.raises(FileNotFoundError):
        open_store(registry_url).read("nope.json")


def test_list_put_delete(registry_url, tmp_path):
    store = open_store(registry_url)
    local = tmp_path / "blob"
    local.write_bytes(b"x" * 1000)
    store.put_file("blobs/sha256/ab/abc", local)
    store.put_bytes("packages/n/1.0.0.json", b"{}")
    assert store.list("blobs") == ["blobs/sha256/ab/abc"]
    assert store.list("packages") == ["packages/n/1.0.0.json"]
    assert store.size("blobs/sha256/ab/abc") == 1000
    store.delete("blobs/sha256/ab/abc")
    assert store.list("blobs") == []
    assert not store.exists("blobs/sha256/ab/abc")
