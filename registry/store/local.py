"""A local folder as a Store: exclusive create is link(2) of a fully written temp file (it fails if
the name exists), compare-and-swap is flock(2) on a lock file then write-temp-and-rename, so readers
see the old bytes or the new, never half of them, and a killed writer leaves only a temp file that
listings skip and gc removes."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from memreg.core.errors import ConcurrentUpdateError, StoreError
from memreg.core.fsutil import TMP_PREFIX, atomic_path, atomic_write_bytes, no_progress, write_temp
from memreg.registry.store.generic import FsspecStore

if TYPE_CHECKING:
    from fsspec.callbacks import Callback

LOCK_PREFIX = ".lock-"  # .lock-<name> beside each swapped document


class LocalStore(FsspecStore):
    """A folder (file:// or a plain path)."""

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
        dest = Path(self._path(key))
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._writing(key), open(dest.parent / f"{LOCK_PREFIX}{dest.name}", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, and by the kernel if we die
            try:
                current = self.etag_of(dest.read_bytes())
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
            if p.is_file() and not p.name.startswith((self.TMP, LOCK_PREFIX))
        )

    def stale_uploads(self) -> Iterator[tuple[str, datetime]]:
        root = Path(self.root)
        for p in root.rglob(f"{self.TMP}*"):
            try:  # a publisher may rename or remove its temp file while we look
                mtime = datetime.fromtimestamp(p.stat().st_mtime, tz=timezone.utc)
            except FileNotFoundError:
                continue
            yield p.relative_to(root).as_posix(), mtime
