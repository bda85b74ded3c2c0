"""The storage primitives the registry is written against: the abstract `Store`.

A backend implements only what the registry calls (read registry/publishing.py, index.py, catalog.py,
gc.py, cache.py, verifying.py for the callers):

  * small documents: `read`, `create` (write if absent: the commit point of a publish), `swap`
    (compare-and-swap against an etag: tags, yanks' indexes, the catalog), `put_bytes` (overwrite);
  * blobs: `put_file` (overwrite: same key, same bytes), `get_file` and `open_read` (streamed reads);
  * the namespace: `list` (keys below a prefix), `children` (folder names), `delete`, and `size` and
    `modified` of one key (gc's grace period, publish's check of a blob it reuses).

Everything else here is derived from those and may be overridden where a backend does better: S3
lists etags and recognises a blob by its ETag instead of reading it back. Backend errors are
translated in the backend's module, nowhere else: a missing key is FileNotFoundError, a lost
create FileExistsError, a lost swap ConcurrentUpdateError, anything else one StoreError.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from memreg.core.fsutil import sha256_stream

if TYPE_CHECKING:
    from fsspec.callbacks import Callback

BLOCK_SIZE = 8 * 2**20  # read size of a streamed blob


class Store(ABC):
    """A registry root. Keys are POSIX paths relative to it (registry/layout.py builds every one)."""

    read_threads = 8  # read_many: documents read at once

    def __init__(self, root: str, url: str) -> None:
        self.root = root.rstrip("/")
        self.url = url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    # documents ---------------------------------------------------------------------------
    @abstractmethod
    def read(self, key: str) -> bytes:
        """The bytes at `key`; FileNotFoundError if there are none."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> None:
        """Write `data` at `key` only if nothing is there; FileExistsError otherwise. Atomic."""

    @abstractmethod
    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        """Replace the document at `key` if its etag is still `expected` (None: it must not exist);
        ConcurrentUpdateError when somebody else changed it first."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write, overwriting whatever is there."""

    # blobs -------------------------------------------------------------------------------
    @abstractmethod
    def put_file(self, key: str, local: Path, callback: Callback | None = None) -> None:
        """Upload, overwriting. Used for content-addressed blobs only (same key, same bytes)."""

    @abstractmethod
    def get_file(self, key: str, local: Path, callback: Callback | None = None) -> None:
        """Download `key` to the local path."""

    @abstractmethod
    def open_read(self, key: str, block_size: int = BLOCK_SIZE) -> IO[bytes]:
        """A binary file object streaming `key` (a context manager)."""

    # the namespace -----------------------------------------------------------------------
    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys of the files below prefix (recursive), relative to the root, sorted."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """Names of the folders directly below prefix, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; nothing happens if it is absent."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Bytes at `key`; FileNotFoundError if there are none."""

    @abstractmethod
    def modified(self, key: str) -> datetime:
        """When `key` was last written (timezone-aware); FileNotFoundError if absent."""

    # derived -----------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def etag_of(self, data: bytes) -> str:
        """The etag `read_with_etag` reports for a document holding exactly `data`."""
        return content_etag(data)

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        """The document and an etag that `swap` accepts as `expected`."""
        data = self.read(key)
        return data, self.etag_of(data)

    def etags(self, prefix: str) -> dict[str, str]:
        """Key -> the etag `read_with_etag` would report, for the documents below prefix. Here the
        documents are read (at once); S3 lists them instead, one request per 1,000 keys."""
        return {k: self.etag_of(d) for k, d in self.read_many(self.list(prefix)).items() if d is not None}

    def read_many(self, keys: list[str]) -> dict[str, bytes | None]:
        """Several small documents at once (None where missing), `read_threads` at a time: on a
        remote store about one round trip per `read_threads` keys, not one per key."""
        def one(key: str) -> bytes | None:
            try:
                return self.read(key)
            except FileNotFoundError:
                return None

        with ThreadPoolExecutor(max_workers=self.read_threads) as pool:
            return dict(zip(keys, pool.map(one, keys)))

    def together(self, *calls: Callable[[], Any]) -> list[Any]:
        """Independent requests at once, their results in order (an exception is raised as is): on a
        remote store, one round trip of latency instead of one per call. Threads, since each call may
        be a listing, a read, or a few of them."""
        if len(calls) < 2:
            return [c() for c in calls]
        with ThreadPoolExecutor(len(calls)) as pool:
            futures = [pool.submit(c) for c in calls]
            return [f.result() for f in futures]

    def same_content(self, key: str, local: Path, hexdigest: str, size: int) -> bool:
        """Whether the stored object at `key` holds exactly these bytes (`local`, whose sha256 and
        size are known). Here the stored bytes are hashed again: cheap on a local disk and memory://."""
        try:
            if self.size(key) != size:
                return False
            with self.open_read(key) as f:
                got, n = sha256_stream(f)
        except FileNotFoundError:
            return False
        return n == size and got == hexdigest

    def stale_uploads(self) -> Iterator[tuple[str, datetime]]:
        """Leftovers of interrupted uploads (temp files, open multipart uploads), with their age."""
        return iter(())

    def remove_stale_upload(self, key: str) -> None:
        self.delete(key)


def content_etag(data: bytes) -> str:
    """The etag of a backend without its own: the sha256 of the document."""
    return hashlib.sha256(data).hexdigest()
