"""The one atomic write and the one streaming sha256 that the registry and the SDK share."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from fsspec.callbacks import Callback
from hypothesis import given, settings
from hypothesis import strategies as st

from memreg.registry.fsutil import (
    TMP_PREFIX,
    atomic_path,
    atomic_write_json,
    file_digest,
    sha256_file,
    sha256_stream,
)


class _Count(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def relative_update(self, inc: int = 1) -> None:
        self.total += inc


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=5000), chunk=st.integers(min_value=1, max_value=700))
def test_sha256_stream_is_sha256_of_all_bytes_whatever_the_chunk(data, chunk):
    counted = _Count()
    assert sha256_stream(io.BytesIO(data), counted, chunk=chunk) == (hashlib.sha256(data).hexdigest(), len(data))
    assert counted.total == len(data)  # progress sees every byte once


def test_file_digest_is_the_registry_form(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"weights" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert file_digest(path) == "sha256:" + sha256_file(path)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("old")
    atomic_write_json(path, {"key": 1}, indent=1)
    assert json.loads(path.read_text()) == {"key": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_atomic_path_failure_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "index.faiss"
    path.write_bytes(b"old index")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TMP_PREFIX)
        tmp.write_bytes(b"half a new ind")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old index"
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]
