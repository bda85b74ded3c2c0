"""The store package: one abstract base of the registry's primitives, one backend a module, and the
generic fsspec backend (not in the conformance suite's backends: its create and swap are not atomic
across writers, so its concurrency tests could not pass) checked on one writer."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

import pytest

from memreg.registry.errors import ConcurrentUpdateError
from memreg.registry.store import GenericStore, LocalStore, MemoryStore, S3Store, Store, open_store

PRIMITIVES = {"read", "create", "swap", "put_bytes", "put_file", "get_file", "open_read", "list", "children",
              "delete", "size", "modified"}


def test_the_base_is_abstract_over_the_primitives_only():
    assert Store.__abstractmethods__ == PRIMITIVES
    with pytest.raises(TypeError, match="abstract"):
        Store("root", "url")  # type: ignore[abstract]


@pytest.mark.parametrize("backend,module", [(GenericStore, "generic"), (LocalStore, "local"),
                                            (MemoryStore, "memory"), (S3Store, "s3")])
def test_each_backend_is_complete_and_in_its_own_module(backend, module):
    assert not backend.__abstractmethods__
    assert backend.__module__ == f"memreg.registry.store.{module}"


@pytest.fixture
def generic() -> GenericStore:
    """A generic fsspec filesystem (fsspec's `dir` over memory://): neither local, memory nor S3."""
    store = open_store("dir://", {"path": f"/generic-{uuid.uuid4().hex[:12]}", "target_protocol": "memory"})
    assert type(store) is GenericStore
    return store


def test_generic_create_is_exclusive_on_one_writer(generic):
    generic.create("packages/a/1.0.0.json", b"first")
    with pytest.raises(FileExistsError):
        generic.create("packages/a/1.0.0.json", b"second")
    assert generic.read("packages/a/1.0.0.json") == b"first"


def test_generic_swap_checks_the_etag(generic):
    key = "packages/a/tags/stable.json"
    generic.swap(key, b"v1", expected=None)
    with pytest.raises(ConcurrentUpdateError):
        generic.swap(key, b"again", expected=None)
    body, etag = generic.read_with_etag(key)
    generic.swap(key, b"v2", expected=etag)
    with pytest.raises(ConcurrentUpdateError):
        generic.swap(key, b"v3", expected=etag)
    assert (body, generic.read(key)) == (b"v1", b"v2")


def test_generic_namespace_and_blobs(generic, tmp_path):
    local = tmp_path / "blob"
    local.write_bytes(b"x" * 1000)
    generic.put_file("blobs/sha256/ab/abc", local)
    generic.put_bytes("packages/n/1.0.0.json", b"{}")
    assert generic.list("blobs") == ["blobs/sha256/ab/abc"]
    assert generic.children("packages") == ["n"]
    assert generic.size("blobs/sha256/ab/abc") == 1000 and isinstance(generic.modified("blobs/sha256/ab/abc"), datetime)
    assert generic.same_content("blobs/sha256/ab/abc", local, hashlib.sha256(b"x" * 1000).hexdigest(), 1000)
    with generic.open_read("blobs/sha256/ab/abc") as f:
        assert f.read() == b"x" * 1000
    generic.get_file("packages/n/1.0.0.json", tmp_path / "got")
    assert (tmp_path / "got").read_bytes() == b"{}"
    generic.delete("blobs/sha256/ab/abc")
    generic.delete("blobs/sha256/ab/abc")  # absent: nothing happens
    assert generic.list("blobs") == [] and not generic.exists("blobs/sha256/ab/abc")
    with pytest.raises(FileNotFoundError):
        generic.read("nope.json")
