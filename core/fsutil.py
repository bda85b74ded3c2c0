"""Local-file helpers shared by the registry and the SDK: one atomic write, one streaming sha256.

An atomic write fills a uniquely named temp file beside the target (same folder, so the same
filesystem) and renames it over the target with os.replace: a reader sees the old bytes or the new,
never half, and a crash leaves at most a `.tmp-` file (the registry's store listings skip them and
`memreg cache clean` / the next pull remove the cache's; a training work folder keeps its few bytes).
Light on purpose (no torch): `memreg.registry` and every registry command import it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from fsspec.callbacks import Callback

TMP_PREFIX = ".tmp-"  # every temp file memreg writes starts with it (listings and cleanups skip them)
CHUNK = 8 * 2**20  # bytes read per hash update


def temp_beside(path: Path) -> Path:
    """A fresh temp name in `path`'s folder; unique, so concurrent writers never share one."""
    path = Path(path)
    return path.parent / f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex}"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path` for the caller to fill; when the block ends normally it
    replaces `path` in one rename, when it raises it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_temp(path: Path, data: bytes, *, fsync: bool = False) -> Path:
    """`data` in a new temp file beside `path` (for callers that commit it themselves, e.g. by an
    exclusive link(2)); with `fsync` the bytes are on disk before the name can appear."""
    tmp = temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:  # a full disk (ENOSPC) fails here: leave no half-written temp file behind
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = False) -> None:
    tmp = write_temp(path, data, fsync=fsync)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str, *, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: Path, doc: object, *, indent: int | None = None) -> None:
    atomic_write_text(path, json.dumps(doc, indent=indent))


@contextmanager
def locked_temp(path: Path, *, folder: bool) -> Iterator[Path]:
    """Create `path` (a file or folder) held under an exclusive flock(2) until the block ends: a
    lock that can be taken means its writer is dead (the kernel drops the locks of killed
    processes), so `remove_if_abandoned` removes leftovers of killed writers and never a live one's."""
    while True:
        if folder:
            path.mkdir()
            fd = os.open(path, os.O_RDONLY)
        else:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # a cleaner may have taken it between creation and lock: then start again
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
        path = path.with_name(f"{path.name.rsplit('.', 1)[0]}.{uuid.uuid4().hex}")
    try:
        yield path
    finally:
        os.close(fd)


def remove_if_abandoned(path: Path) -> bool:
    """Remove a temp file/folder made by `locked_temp` whose writer is gone (its lock can be taken)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # a live writer holds it
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True


def no_progress(callback: Callback | None) -> Callback:
    """`callback`, or fsspec's no-op one where none was given. Imported here, when bytes are about
    to move: importing fsspec costs ~45 ms, and `list`, `show` or a cached `pull` move none."""
    if callback is not None:
        return callback
    from fsspec.callbacks import DEFAULT_CALLBACK

    return DEFAULT_CALLBACK


def sha256_stream(f: BinaryIO, callback: Callback | None = None, *, chunk: int = CHUNK) -> tuple[str, int]:
    """(hex sha256, bytes read) of an open binary file object read to its end, reporting each
    block's size to `callback`."""
    callback = no_progress(callback)
    h, size = hashlib.sha256(), 0
    while block := f.read(chunk):
        h.update(block)
        size += len(block)
        callback.relative_update(len(block))
    return h.hexdigest(), size


def sha256_file(path: Path, callback: Callback | None = None, *, chunk: int = CHUNK) -> str:
    """Hex sha256 of a local file, streamed (files may be many GB)."""
    with open(path, "rb") as f:
        return sha256_stream(f, callback, chunk=chunk)[0]


def file_digest(path: Path, callback: Callback | None = None) -> str:
    """The registry's digest of a local file, "sha256:<hex>" (FileEntry.digest)."""
    return "sha256:" + sha256_file(path, callback)
