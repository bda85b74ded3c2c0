"""The local cache under $MEMREG_HOME/cache: content-addressed blobs and assembled packages.

A blob enters the cache only after its size and sha256 match the manifest: it is downloaded to a
temp file beside its final place, hashed, and renamed into place. A package folder is assembled
from cached blobs (hard links where the filesystem allows) into a temp folder and renamed, so a
folder that exists is complete.

Nothing cached is trusted forever. When a blob or a folder is written, a record of each file's
size, mtime, inode and ctime (nanoseconds) is kept with it (`<hex>.stat`, `<folder>/.memreg-files.json`);
every pull compares them (a stat per file, no read), and `pull --verify` / `memreg cache verify` re-hash.
An edit that restores the mtime still moves the ctime; so does a hard link made elsewhere to the same
blob, which is why a ctime that alone moved is settled by hashing the file once. Anything that
differs is thrown away and fetched again from the registry.

Temp files and folders are held under flock(2) by the process writing them: a lock that can be
taken means its writer is dead (the kernel drops locks of killed processes), so leftovers of a
killed pull are removed by the next pull or `memreg cache clean`, and a live pull's never are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from memreg.core.errors import DigestMismatchError, ManifestError
from memreg.core.fsutil import TMP_PREFIX, no_progress, sha256_file
from memreg.core.fsutil import locked_temp as _locked_temp
from memreg.core.fsutil import remove_if_abandoned as _remove_if_abandoned
from memreg.registry.package import CARD
from memreg.registry.reading import warn
from memreg.core.settings import cache_dir, cards_dir
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
    """What one stat says of a file's identity: size, mtime, inode, ctime (all nanoseconds). An edit
    that restores the mtime (os.utime) still moves the ctime, which no one can set back."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _is_stat_record(value: object) -> bool:
    """[size, mtime_ns] (older caches) or [size, mtime_ns, ino, ctime_ns], whole numbers only."""
    return (isinstance(value, list) and len(value) in (2, 4)
            and all(type(x) is int for x in value))  # type(): bool is an int too


def _still_holds(path: Path, recorded: object, hexdigest: str) -> list[int] | None:
    """The file's stat record now if it still holds the bytes it held when `recorded` was taken,
    else None. The same record: no read. Only the ctime moved (or an older record without inode
    and ctime): a hard link to the same inode added or removed elsewhere in the cache moves it
    too, so the bytes decide, hashed once; the caller keeps the new record."""
    now = _stat_record(path)
    if now == recorded:
        return now
    if not _is_stat_record(recorded) or recorded[:3] != now[:len(recorded[:3])]:  # type: ignore[index]
        return None
    return now if sha256_file(path) == hexdigest else None


def _keep_record(path: Path, record: object) -> None:
    """Replace a record whose file was re-hashed and found unchanged. Only saves the next pull a
    hash, so a failure is no error: a concurrent pull may have moved the folder aside meanwhile."""
    with contextlib.suppress(OSError):
        _write_locked(path, json.dumps(record).encode())


def _read_record(folder: Path) -> dict[str, list[int]] | None:
    """A package folder's record (relative path -> stat record), or None where it is missing or
    not of that shape (a stray or damaged file: the caller says so or rebuilds it)."""
    record = _read_json(folder / RECORD)
    if isinstance(record, dict) and all(_is_stat_record(v) for v in record.values()):
        return record
    return None


def _read_json(path: Path) -> object | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_locked(path: Path, data: bytes) -> None:
    """Atomic write whose temp file is locked for as long as it exists: a concurrent pull's
    clean_abandoned would otherwise take it for a killed pull's leftover and delete it under us."""
    with _locked_temp(path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex}"), folder=False) as tmp:
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


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
        recorded = _read_json(self._record_path(p))
        try:
            if p.stat().st_size != entry.size or (now := _still_holds(p, recorded, entry.hex)) is None:
                return False
        except FileNotFoundError:
            return False
        if now != recorded:
            _keep_record(self._record_path(p), now)
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
        record = _read_record(folder)
        if not folder.is_dir() or record is None:
            return False
        found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()} - {RECORD}
        if found != {e.path for e in manifest.model.files} | {CARD} or set(record) != found:
            return False  # a file added (a .py dropped in), removed or renamed
        digests = {e.path: e.hex for e in manifest.model.files}
        digests[CARD] = hashlib.sha256(manifest.model_dump_json(indent=2).encode()).hexdigest()
        try:
            now = {path: _still_holds(folder / path, rec, digests[path]) for path, rec in record.items()}
        except FileNotFoundError:
            return False
        if any(v is None for v in now.values()):
            return False
        if now != record:  # bytes re-hashed after a ctime move: keep the new stats
            _keep_record(folder / RECORD, now)
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
        for path in sorted((self.root / "packages").glob(f"*/*/{RECORD}")):
            folder = path.parent
            doc, record = _read_json(folder / CARD), _read_record(folder)
            if folder.name.startswith(TMP) or not isinstance(doc, dict):
                continue
            if record is None:
                warn(f"{path} is not a record of the folder's files; skipped (the next pull of that "
                     "package rebuilds the folder, `memreg cache clean` removes it)")
                continue
            size = sum(v[0] for v in record.values())
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
        freed = self._clean_cards() if self.root == cache_dir() else 0
        for sub, pattern in (("packages", "*/*"), ("blobs", "sha256/*/*")):  # packages first: no folder outlives its blobs
            for p in sorted((self.root / sub).glob(pattern)):
                size = _bytes_in(p)
                if p.name.startswith(TMP):
                    freed += size if _remove_if_abandoned(p) else 0
                    continue
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                freed += size
        return freed

    @staticmethod
    def _clean_cards() -> int:
        """The model cards publishes staged beside the cache ($MEMREG_HOME/cards): a live publish's
        folder is locked and kept; cards older memreg versions left there are removed. Bytes freed."""
        freed = 0
        for p in sorted(cards_dir().glob("*")):
            size = _bytes_in(p)
            if p.name.startswith(TMP):
                freed += size if _remove_if_abandoned(p) else 0
            elif p.is_file():
                p.unlink(missing_ok=True)
                freed += size
        return freed


def _bytes_in(p: Path) -> int:
    """Bytes of a file, or of every file below a folder."""
    return sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


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
