"""One storage protocol over fsspec, with the few atomic primitives the registry needs.

The registry never calls fsspec directly: it asks a Store for
  * `put_file` / `put_bytes`: overwrite (content-addressed blobs: same key, same bytes);
  * `create`: exclusive create, the commit point of a publish (FileExistsError if present);
  * `swap`: compare-and-swap of a small mutable document (tags), keyed by an opaque etag.
Protocol-specific behaviour stays at this edge: S3 uses conditional writes (If-None-Match: * and
If-Match: <etag>; registry/s3.py), a local folder uses link(2) and flock(2), memory:// a process
lock. Backend errors are translated here and in registry/s3.py, nowhere else.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memreg.registry.errors import ConcurrentUpdateError, StoreError
from memreg.registry.fsutil import TMP_PREFIX, atomic_path, atomic_write_bytes, no_progress, sha256_stream, write_temp

if TYPE_CHECKING:  # fsspec is imported where a store is opened: S3 documents never need it
    import fsspec
    from fsspec.callbacks import Callback

    from memreg.registry.s3 import (  # noqa: F401
        S3_ATTEMPTS,
        S3_CONNECT_TIMEOUT,
        S3_READ_TIMEOUT,
        S3_RETRIES,
        S3Store,
        _is_precondition_failure,
        s3_defaults,
    )


class Store:
    """A registry root on some fsspec filesystem. Keys are POSIX paths relative to the root."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    # reads -------------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StoreError(f"cannot read {key} from {self.url}: {e}") from e

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        """The document and an etag that `swap` accepts as `expected`."""
        data = self.read(key)
        return data, _content_etag(data)

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def size(self, key: str) -> int:
        return int(self.fs.info(self._path(key))["size"])

    def modified(self, key: str) -> datetime:
        info = self.fs.info(self._path(key))
        for field in ("LastModified", "mtime", "created"):
            value = info.get(field)
            if isinstance(value, datetime):
                return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
            if isinstance(value, (int, float)):
                return datetime.fromtimestamp(value, tz=timezone.utc)
        try:
            return self.fs.modified(self._path(key)).replace(tzinfo=timezone.utc)
        except (NotImplementedError, AttributeError):
            return datetime.now(timezone.utc)

    def list(self, prefix: str) -> list[str]:
        """Keys of files below prefix (recursive), relative to the root, sorted."""
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
        """Names of the folders directly below prefix."""
        try:
            entries = self.fs.ls(self._path(prefix).rstrip("/"), detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def etag_of(self, data: bytes) -> str:
        """The etag `read_with_etag` would report for a document holding exactly `data`."""
        return _content_etag(data)

    def etags(self, prefix: str) -> dict[str, str]:
        """Key -> the etag `read_with_etag` would report, for the documents below prefix. S3 lists them
        (one request per 1,000 keys); here they are computed from the documents, read at once."""
        return {k: self.etag_of(d) for k, d in self.read_many(self.list(prefix)).items() if d is not None}

    def together(self, *calls: Callable[[], Any]) -> list[Any]:
        """Independent requests at once, their results in order (an exception is raised as is): on a
        remote store, one round trip of latency instead of one per call. Threads, since each call may
        be a listing, a read, or a few of them; s3fs serves calls from many threads on its one loop."""
        if len(calls) < 2:
            return [c() for c in calls]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(calls)) as pool:
            futures = [pool.submit(c) for c in calls]
            return [f.result() for f in futures]

    read_threads = 8

    def read_many(self, keys: list[str]) -> dict[str, bytes | None]:
        """Several small documents at once (None where missing), `read_threads` at a time: on a
        remote store about one round trip per `read_threads` keys, not one per key."""
        from concurrent.futures import ThreadPoolExecutor

        def one(key: str) -> bytes | None:
            try:
                return self.read(key)
            except FileNotFoundError:
                return None

        with ThreadPoolExecutor(max_workers=self.read_threads) as pool:
            return dict(zip(keys, pool.map(one, keys)))

    def open_read(self, key: str, block_size: int = 8 * 2**20):
        return self.fs.open(self._path(key), "rb", block_size=block_size)

    def get_file(self, key: str, local: Path, callback: Callback | None = None) -> None:
        self.fs.get_file(self._path(key), str(local), callback=no_progress(callback))

    # writes ------------------------------------------------------------------------------
    def put_file(self, key: str, local: Path, callback: Callback | None = None) -> None:
        """Upload, overwriting. Used for content-addressed blobs only (same key, same bytes)."""
        self.fs.put_file(str(local), self._path(key), callback=no_progress(callback))

    def put_bytes(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data)

    def create(self, key: str, data: bytes) -> None:
        """Write `data` at `key` only if nothing is there; FileExistsError otherwise. Atomic."""
        raise NotImplementedError

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        """Replace the document at `key` if its etag is still `expected` (None: must not exist).

        Raises ConcurrentUpdateError when somebody else changed it first.
        """
        raise NotImplementedError

    def _check_then_write(self, key: str, data: bytes, expected: str | None) -> None:
        """Compare-and-swap for backends without conditional writes; atomic only under a lock."""
        try:
            current = _content_etag(self.read(key))
        except FileNotFoundError:
            current = None
        if current != expected:
            raise ConcurrentUpdateError(f"{key} changed while it was being updated")
        self.fs.pipe_file(self._path(key), data)

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def same_content(self, key: str, local: Path, hexdigest: str, size: int) -> bool:
        """Whether the stored object at `key` holds exactly these bytes (`local`, whose sha256 and
        size are known). The default re-hashes the stored bytes: cheap on a local disk and memory://."""
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


def _content_etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStore(Store):
    """A folder. Exclusive create = link(2) of a fully written temp file (fails if the name exists);
    compare-and-swap = flock(2) on a lock file, then write-temp-and-rename."""

    TMP = TMP_PREFIX

    def _dest(self, key: str) -> Path:
        dest = Path(self._path(key))
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    @contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """A failed write (a full disk, a read-only folder) as one StoreError naming the key; the
        temp file it was writing is already gone (atomic_path, write_temp)."""
        try:
            yield
        except (FileExistsError, ConcurrentUpdateError):
            raise
        except OSError as e:
            raise StoreError(f"cannot write {key} to {self.url}: {e.strerror or e}; nothing was changed there "
                             "(free some space or fix the folder's permissions, then run the command again)") from e

    def put_file(self, key: str, local: Path, callback: Callback | None = None) -> None:
        with self._writing(key), atomic_path(self._dest(key)) as tmp:  # readers see the old bytes or the new
            self.fs.put_file(str(local), str(tmp), callback=no_progress(callback))

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._writing(key):
            atomic_write_bytes(self._dest(key), data, fsync=True)

    def create(self, key: str, data: bytes) -> None:
        with self._writing(key):
            dest = self._dest(key)
            tmp = write_temp(dest, data, fsync=True)
        try:
            os.link(tmp, dest)  # atomic and exclusive: EEXIST if anybody created it first
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "already exists", key) from None
        finally:
            tmp.unlink(missing_ok=True)

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        import fcntl

        dest = Path(self._path(key))
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._writing(key), open(dest.parent / f".lock-{dest.name}", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, and by the kernel if we die
            try:
                current = _content_etag(dest.read_bytes())
            except FileNotFoundError:
                current = None
            if current != expected:
                raise ConcurrentUpdateError(f"{key} changed while it was being updated")
            atomic_write_bytes(dest, data, fsync=True)

    def list(self, prefix: str) -> list[str]:
        base = Path(self._path(prefix))
        if not base.exists():
            return []
        root = Path(self.root)
        return sorted(
            p.relative_to(root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith((self.TMP, ".lock-"))
        )

    def stale_uploads(self) -> Iterator[tuple[str, datetime]]:
        root = Path(self.root)
        for p in root.rglob(f"{self.TMP}*"):
            try:  # a publisher may rename or remove its temp file while we look
                mtime = datetime.fromtimestamp(p.stat().st_mtime, tz=timezone.utc)
            except FileNotFoundError:
                continue
            yield p.relative_to(root).as_posix(), mtime


class MemoryStore(Store):
    """memory:// (one process): a lock makes create and swap atomic."""

    _lock = threading.Lock()

    def create(self, key: str, data: bytes) -> None:
        with self._lock:
            if self.exists(key):
                raise FileExistsError(errno.EEXIST, "already exists", key)
            self.fs.pipe_file(self._path(key), data)

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        with self._lock:
            self._check_then_write(key, data, expected)


class GenericStore(Store):
    """Other fsspec backends: exclusive create via mode='create' where supported, else a
    check-then-write that is not safe under concurrent publishers (said in the docs)."""

    def create(self, key: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._path(key), data, mode="create")
            return
        except TypeError:
            pass
        if self.exists(key):
            raise FileExistsError(errno.EEXIST, "already exists", key)
        self.fs.pipe_file(self._path(key), data)

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        self._check_then_write(key, data, expected)  # not atomic across processes (see class doc)


def open_store(url: str, storage_options: dict[str, Any] | None = None) -> Store:
    """A Store for any fsspec URL: a plain path, file://, memory://, s3://, gs://, …"""
    from memreg.registry import s3  # here, not at the top: s3.py subclasses Store (see _FROM_S3)

    opts = dict(storage_options or {})
    if url.startswith(("s3://", "s3a://")):  # no url_to_fs: it would import s3fs, which only blobs need
        opts = s3.s3_defaults(opts)
        retries, deadline = s3.pop_limits(opts)  # memreg's own options: neither botocore nor s3fs takes them
        return s3.S3Store(url.split("://", 1)[1], url, opts, retries, deadline)
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(url, **opts)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return LocalStore(fs, root, url)
    if protocol == "memory":
        return MemoryStore(fs, root, url)
    return GenericStore(fs, root, url)


# These lived here before registry/s3.py. That module subclasses Store, so importing it at the top
# of this one would be circular (whichever of the two was imported first would fail): they are
# looked up on first use instead, under their old names (memreg.registry.store.S3Store).
_FROM_S3 = frozenset({"S3Store", "S3_CONNECT_TIMEOUT", "S3_READ_TIMEOUT", "S3_RETRIES", "S3_ATTEMPTS",
                      "s3_defaults", "_is_precondition_failure"})


def __getattr__(name: str) -> Any:
    if name not in _FROM_S3:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from memreg.registry import s3

    return getattr(s3, name)
