"""Any fsspec filesystem as a Store (gs://, az://, sftp://, …), and the fsspec reads, listings and
transfers that the local folder and memory:// backends share (local.py, memory.py).

What fsspec cannot promise is atomicity: `create` uses `mode="create"` where the filesystem takes it,
else a check then a write, and `swap` a check then a write. Neither is safe under concurrent writers
on such a backend; local.py and memory.py make them atomic, S3 has its own module (s3.py).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING

from memreg.core.errors import ConcurrentUpdateError, StoreError
from memreg.core.fsutil import no_progress
from memreg.registry.store.base import BLOCK_SIZE, Store

if TYPE_CHECKING:  # fsspec is imported where a store is opened: S3 documents never need it
    import fsspec
    from fsspec.callbacks import Callback


class FsspecTransfers:
    """Blob transfers through an fsspec filesystem `fs` (s3fs too: S3Store moves its blobs with these)."""

    fs: fsspec.AbstractFileSystem
    _path: Callable[[str], str]

    def put_file(self, key: str, local: Path, callback: Callback | None = None) -> None:
        self.fs.put_file(str(local), self._path(key), callback=no_progress(callback))

    def get_file(self, key: str, local: Path, callback: Callback | None = None) -> None:
        self.fs.get_file(self._path(key), str(local), callback=no_progress(callback))

    def open_read(self, key: str, block_size: int = BLOCK_SIZE) -> IO[bytes]:
        return self.fs.open(self._path(key), "rb", block_size=block_size)


class FsspecStore(FsspecTransfers, Store):
    """A registry root on an fsspec filesystem; how `create` and `swap` are made safe is the subclass's."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
        super().__init__(root, url)
        self.fs = fs

    def read(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StoreError(f"cannot read {key} from {self.url}: {e}") from e

    def put_bytes(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        root = self.root + "/" if self.root else ""
        out = []
        for p in found:
            p = p if not root or p.startswith(root) else self.fs._strip_protocol(p)
            out.append(p[len(root):] if root and p.startswith(root) else p)
        return sorted(out)

    def children(self, prefix: str) -> list[str]:
        try:
            entries = self.fs.ls(self._path(prefix).rstrip("/"), detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def size(self, key: str) -> int:
        return int(self.fs.info(self._path(key))["size"])

    def modified(self, key: str) -> datetime:
        info = self.fs.info(self._path(key))
        for field in ("LastModified", "mtime", "created"):  # what the common fsspec backends call it
            value = info.get(field)
            if isinstance(value, datetime):
                return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
            if isinstance(value, (int, float)):
                return datetime.fromtimestamp(value, tz=timezone.utc)
        try:
            return self.fs.modified(self._path(key)).replace(tzinfo=timezone.utc)
        except (NotImplementedError, AttributeError):
            return datetime.now(timezone.utc)  # unknown age: gc treats it as young and keeps it

    def _check_then_write(self, key: str, data: bytes, expected: str | None) -> None:
        """Compare-and-swap for filesystems without conditional writes; atomic only under a lock."""
        try:
            current = self.etag_of(self.read(key))
        except FileNotFoundError:
            current = None
        if current != expected:
            raise ConcurrentUpdateError(f"{key} changed while it was being updated")
        self.fs.pipe_file(self._path(key), data)


class GenericStore(FsspecStore):
    """Other fsspec backends: exclusive create via mode='create' where supported, else a
    check-then-write that is not safe under concurrent publishers (docs/format.md says so)."""

    def create(self, key: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._path(key), data, mode="create")
            return
        except TypeError:  # this filesystem's pipe_file takes no mode
            pass
        if self.exists(key):
            raise FileExistsError(errno.EEXIST, "already exists", key)
        self.fs.pipe_file(self._path(key), data)

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        self._check_then_write(key, data, expected)  # not atomic across processes (see the class)
