"""Issue 23 item 9, cache side: what a pull trusts in the local cache.

* an edit that restores the mtime (os.utime) is caught on the next pull: the record holds the
  inode and ctime too, from the same one stat;
* a hard link made elsewhere to a cached blob moves its ctime without changing a byte: the bytes
  decide (one hash), nothing is downloaded again;
* a `.memreg-files.json` of the wrong shape is skipped with a warning naming it by `cache ls` and
  `cache verify`, instead of a TypeError.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import memreg_cli
from memreg.registry import Registry
from memreg.registry.cache import RECORD, Cache


def _pulled(url, package):
    reg = Registry.init(url)
    reg.publish(package, name="law", version="1.0.0")
    return reg, reg.pull("law")


@pytest.fixture
def pulled(registry_url, tiny_package):
    """From each backend: what the cache records does not depend on where the bytes came from."""
    return _pulled(registry_url, tiny_package)


@pytest.fixture
def pulled_locally(tmp_path, tiny_package):
    return _pulled(str(tmp_path / "registry"), tiny_package)


def _no_downloads(reg, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a blob was downloaded again")

    monkeypatch.setattr(reg.store, "get_file", refuse)


def _edit_keeping_mtime(path) -> None:
    """Flip one byte in place, keeping the size, the mode and the mtime (to the nanosecond)."""
    st = path.stat()
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.chmod(path, st.st_mode & 0o777)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_an_edit_that_restores_the_mtime_is_caught_on_the_next_pull(pulled, tiny_package):
    reg, folder = pulled
    weights = folder / "model.safetensors"
    _edit_keeping_mtime(weights)
    assert weights.read_bytes() != (tiny_package / "model.safetensors").read_bytes()
    again = reg.pull("law")
    assert (again / "model.safetensors").read_bytes() == (tiny_package / "model.safetensors").read_bytes()


def test_a_hard_link_elsewhere_costs_a_hash_not_a_download(pulled_locally, tmp_path, monkeypatch):
    reg, folder = pulled_locally
    m = reg.resolve("law")
    cache = Cache()
    for entry in m.model.files:
        os.link(cache.blob_path(entry), tmp_path / entry.hex)  # moves every blob's ctime, not a byte
    _no_downloads(reg, monkeypatch)
    assert reg.pull("law") == folder  # the folder's files are those blobs: hashed once, kept
    # an older cache's record (size and mtime only) is settled the same way, and brought up to date
    record = json.loads((folder / RECORD).read_text())
    (folder / RECORD).write_text(json.dumps({k: v[:2] for k, v in record.items()}))
    assert reg.pull("law") == folder
    assert json.loads((folder / RECORD).read_text()) == record
    (folder / "config.json").unlink()  # assembled again, from the cached blobs whose ctime moved
    assert reg.pull("law") == folder and cache.package_ok(m)


@pytest.mark.slow  # a fresh memreg process per record
@pytest.mark.parametrize("record", ['[1, 2]', '{"config.json": "12"}', '{"config.json": [1]}',
                                    '{"config.json": {"size": 1}}', '{"config.json": [true, 1]}', '"x"'])
def test_a_record_of_the_wrong_shape_is_skipped_with_a_warning(pulled_locally, record):
    reg, folder = pulled_locally
    (folder / RECORD).write_text(record)
    for command in (("cache", "ls"), ("cache", "verify")):
        proc = memreg_cli(*command)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert str(folder / RECORD) in proc.stderr and "skipped" in proc.stderr, proc.stderr
    assert reg.pull("law") == folder and Cache().package_ok(reg.resolve("law"))  # the next pull rebuilds it
