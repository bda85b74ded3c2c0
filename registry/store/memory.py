"""memory:// as a Store: one process's registry (tests, experiments); a process-wide lock makes
create and swap atomic across its threads."""

from __future__ import annotations

import errno
import threading

from memreg.registry.store.generic import FsspecStore


class MemoryStore(FsspecStore):
    """memory:// (one process)."""

    _lock = threading.Lock()  # one for every memory:// store: they share fsspec's one MemoryFileSystem

    def create(self, key: str, data: bytes) -> None:
        with self._lock:
            if self.exists(key):
                raise FileExistsError(errno.EEXIST, "already exists", key)
            self.fs.pipe_file(self._path(key), data)

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        with self._lock:
            self._check_then_write(key, data, expected)
