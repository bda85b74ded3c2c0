"""The local cache under $MEMREG_HOME/cache: content-addressed blobs and assembled packages.

A blob enters the cache only after its size and sha256 match the manifest: it is downloaded to a
temp file beside its final place, hashed, and renamed into place. A package folder is assembled
from cached blobs (hard links where the filesystem allows) into a temp folder and renamed, so a
folder that exists is complete.

Nothing cached is trusted forever. When a blob or a folder is written, a record of each file's
size and mtime (nanoseconds) is kept with it (`<hex>.stat`, `<folder>/.memreg-files.json`); every pull
compares them (a stat per file, no read), and `pull --verify` / `memreg cache verify` re-hash.
Anything that differs is thrown away and fetched again from the registry.

Temp files and folders are held under flock(2) by the process writing them: a lock that can be
taken means its writer is dead (the kernel drops locks of killed processes), so leftovers of a
killed pull are removed by the next pull or `memreg cache clean`, and a live pull's never are.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from memreg.registry.errors import DigestMismatchError, ManifestError
from memreg.registry.fsutil import TMP_PREFIX, no_progress, sha256_file
from memreg.registry.package import CARD
from memreg.registry.settings import cache_dir
from memreg.registry.store import Store
from memreg.schemas import FileEntry, Manifest

if TYPE_CHECKING:
    from fsspec.callbacks import Callback

RECORD = ".memreg-files.json"  # inside each package folder: written before the folder appears
TMP = TMP_PREFIX
_HEX = set("0123456789abcdef")


def _advance(parent: Callback) -> Callback:
    """A callback that forwards byte progress of one download to the whole pull's (built here, not
    at import: fsspec is imported only when bytes move)."""
    from fsspec.callbacks import Callback

    class Advance(Callback):
        def relative_update(self, inc: int = 1) -> None:
            parent.relative_update(inc)

        def absolute_update(self, value: int) -> None:
            parent.relative_update(value - (self.value or 0))
            self.value = value

    return Advance()


@dataclass(frozen=True)
class CachedPackage:
    name: str
    version: str
    folder: Path
    size: int


def _stat_record(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_json(path: Path) -> object | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def _locked_temp(path: Path, *, folder: bool) -> Iterator[Path]:
    """Create `path` (a file or folder) held under an exclusive flock until the block ends."""
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


def _write_locked(path: Path, data: bytes) -> None:
    """Atomic write whose temp file is locked for as long as it exists: a concurrent pull's
    clean_abandoned would otherwise take it for a killed pull's leftover and delete it under us."""
    with _locked_temp(path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex}"), folder=False) as tmp:
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _remove_if_abandoned(path: Path) -> bool:
    """Remove a temp file/folder whose writer is gone (its lock can be taken)."""
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


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else cache_dir()

    # blobs -------------------------------------------------------------------------------
    def blob_path(self, entry: FileEntry) -> Path:
        return self.root / "blobs" / "sha256" / entry.hex[:2] / entry.hex

    def _record_path(self, blob: Path) -> Path:
        return blob.with_name(blob.name + ".stat")

    def has_blob(self, entry: FileEntry, *, verify: bool = False) -> bool:
        """The blob is cached and unchanged since it was verified: same size and mtime as
        recorded then (a stat), and with `verify` the same sha256 (a full read)."""
        p = self.blob_path(entry)
        try:
            if _stat_record(p) != _read_json(self._record_path(p)) or p.stat().st_size != entry.size:
                return False
        except FileNotFoundError:
            return False
        return not verify or sha256_file(p) == entry.hex

    def package_dir(self, manifest: Manifest) -> Path:
        # keyed by the manifest's own digest too: two registries may hold law@1.0.0 with other bytes
        digest = hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()[:16]
        return self.root / "packages" / manifest.name / f"{manifest.version}-{digest}"

    def fetch_blob(self, store: Store, key: str, entry: FileEntry, callback: Callback | None = None,
                   *, verify: bool = False) -> bool:
        """Download, verify and keep one blob; False if it was already cached (and unchanged)."""
        if self.has_blob(entry, verify=verify):
            return False
        dest = self.blob_path(entry)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _locked_temp(dest.parent / f"{TMP}{entry.hex}.{uuid.uuid4().hex}", folder=False) as tmp:
            try:
                # The backend's own get_file (one streaming GET on S3) then a local hash: measured
                # faster than hashing while reading through a file object (ranged GETs on S3).
                store.get_file(key, tmp, callback=_advance(no_progress(callback)))
                size = tmp.stat().st_size
                got = sha256_file(tmp) if size == entry.size else "(not hashed: wrong size)"
                if size != entry.size or got != entry.hex:
                    raise DigestMismatchError(
                        f"blob {entry.digest} ({entry.path}) is corrupt in the registry: expected {entry.size} bytes "
                        f"with that sha256, got {size} bytes (sha256 {got}); republish the package or restore the blob",
                        digest=entry.digest,
                        path=entry.path,
                    )
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)  # a new inode: folders linked to a tampered old one keep theirs
                _write_locked(self._record_path(dest), json.dumps(_stat_record(dest)).encode())
            finally:
                tmp.unlink(missing_ok=True)
        return True

    # packages ----------------------------------------------------------------------------
    def package_ok(self, manifest: Manifest, *, verify: bool = False) -> bool:
        """The assembled folder holds exactly the manifest's files, unchanged since assembly
        (size and mtime; with `verify`, every file re-hashed and the card compared)."""
        folder = self.package_dir(manifest)
        record = _read_json(folder / RECORD)
        if not folder.is_dir() or not isinstance(record, dict):
            return False
        found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()} - {RECORD}
        if found != {e.path for e in manifest.model.files} | {CARD} or set(record) != found:
            return False  # a file added (a .py dropped in), removed or renamed
        try:
            if any(_stat_record(folder / path) != rec for path, rec in record.items()):
                return False
        except FileNotFoundError:
            return False
        if verify:
            if (folder / CARD).read_text() != manifest.model_dump_json(indent=2):
                return False
            return all(sha256_file(folder / e.path) == e.hex for e in manifest.model.files)
        return True

    def assemble(self, manifest: Manifest, *, verify: bool = False) -> Path:
        """The package folder for a manifest whose blobs are all cached (replacing a folder
        that `package_ok` refused)."""
        final = self.package_dir(manifest)
        final.parent.mkdir(parents=True, exist_ok=True)
        with _locked_temp(final.parent / f"{TMP}{final.name}.{uuid.uuid4().hex}", folder=True) as tmp:
            try:
                for entry in manifest.model.files:
                    _place(self.blob_path(entry), tmp / entry.path)
                with open(tmp / CARD, "x") as f:  # "x": never through a link that is already there
                    f.write(manifest.model_dump_json(indent=2))
                record = {p.relative_to(tmp).as_posix(): _stat_record(p) for p in tmp.rglob("*") if not p.is_dir()}
                (tmp / RECORD).write_text(json.dumps(record))  # a rename keeps every stat it records
                if final.exists():
                    if self.package_ok(manifest, verify=verify):  # a concurrent pull replaced it meanwhile
                        return final
                    self._discard(final)
                try:
                    os.rename(tmp, final)
                except OSError:
                    if not final.is_dir():  # somebody else assembled it first: theirs is as good
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _discard(self, folder: Path) -> None:
        """Move a bad folder aside, then remove it (a reader sees the old folder or none)."""
        aside = folder.with_name(f"{TMP}{folder.name}.{uuid.uuid4().hex}")
        try:
            os.rename(folder, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    # housekeeping (memreg cache ls / clean / verify) -------------------------------------
    def clean_abandoned(self) -> int:
        """Remove temp files and folders of killed pulls; a live pull's are locked and kept."""
        removed = 0
        for sub in ("blobs", "packages"):
            base = self.root / sub
            if base.is_dir():
                for p in list(base.glob(f"*/*/{TMP}*")) + list(base.glob(f"*/{TMP}*")):
                    removed += _remove_if_abandoned(p)
        return removed

    def packages(self) -> list[CachedPackage]:
        out = []
        for record in sorted((self.root / "packages").glob(f"*/*/{RECORD}")):
            folder = record.parent
            doc = _read_json(folder / CARD)
            if folder.name.startswith(TMP) or not isinstance(doc, dict):
                continue
            size = sum(v[0] for v in (_read_json(record) or {}).values())
            out.append(CachedPackage(str(doc.get("name")), str(doc.get("version")), folder, size))
        return out

    def blobs(self) -> list[Path]:
        base = self.root / "blobs" / "sha256"
        return sorted(p for p in base.glob("*/*") if len(p.name) == 64 and set(p.name) <= _HEX)

    def verify(self) -> list[str]:
        """Re-hash every cached blob and package; remove what is wrong (the next pull fetches it
        again) and say what it was."""
        problems = []
        for blob in self.blobs():
            if sha256_file(blob) != blob.name:
                problems.append(f"cached blob sha256:{blob.name} is corrupt; removed")
                blob.unlink(missing_ok=True)
                self._record_path(blob).unlink(missing_ok=True)
        for pkg in self.packages():
            try:
                manifest = Manifest.model_validate_json((pkg.folder / CARD).read_bytes())
                ok = self.package_dir(manifest) == pkg.folder and self.package_ok(manifest, verify=True)
            except (OSError, ValueError):
                ok = False
            if not ok:
                problems.append(f"cached package {pkg.name}@{pkg.version} ({pkg.folder}) was changed; removed")
                self._discard(pkg.folder)
        return problems

    def clean(self) -> int:
        """Remove every cached package and blob, and temp files of killed pulls; a live pull's
        temp files (locked) stay. Bytes freed."""
        freed = 0
        for sub, pattern in (("packages", "*/*"), ("blobs", "sha256/*/*")):  # packages first: no folder outlives its blobs
            for p in sorted((self.root / sub).glob(pattern)):
                size = sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
                if p.name.startswith(TMP):
                    freed += size if _remove_if_abandoned(p) else 0
                    continue
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                freed += size
        return freed


def _place(blob: Path, target: Path) -> None:
    """Hard link (or copy where links do not work) a blob to a new file; never writes into an
    existing file, which could be a link to another cached blob."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(blob, target)
        return
    except FileExistsError:
        raise ManifestError(f"{target.name} appears twice in the package; the manifest is malformed") from None
    except OSError:
        pass  # another filesystem, or links not allowed: copy
    with open(blob, "rb") as src, open(target, "xb") as dst:
        shutil.copyfileobj(src, dst, 8 * 2**20)
