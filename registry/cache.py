"""The local cache under $MEMREG_HOME/cache: content-addressed blobs and assembled packages.

A blob enters the cache only after its size and sha256 match the manifest: it is downloaded to a
temp file beside its final place, hashed while it streams, and renamed into place. A package folder
is assembled from cached blobs (hard links where the filesystem allows) into a temp folder and
renamed, so a folder that exists is complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from fsspec.callbacks import DEFAULT_CALLBACK, Callback

from memreg.registry.errors import DigestMismatchError
from memreg.registry.settings import cache_dir
from memreg.registry.store import Store
from memreg.schemas import FileEntry, Manifest


class _Advance(Callback):
    """Forwards byte progress of one download to the whole pull's callback."""

    def __init__(self, parent: Callback) -> None:
        super().__init__()
        self._parent = parent

    def relative_update(self, inc: int = 1) -> None:
        self._parent.relative_update(inc)

    def absolute_update(self, value: int) -> None:
        self._parent.relative_update(value - (self.value or 0))
        self.value = value


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else cache_dir()

    def blob_path(self, entry: FileEntry) -> Path:
        return self.root / "blobs" / "sha256" / entry.hex[:2] / entry.hex

    def has_blob(self, entry: FileEntry) -> bool:
        p = self.blob_path(entry)
        return p.is_file() and p.stat().st_size == entry.size

    def package_dir(self, manifest: Manifest) -> Path:
        # keyed by the manifest's own digest too: two registries may hold law@1.0.0 with other bytes
        digest = hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()[:16]
        return self.root / "packages" / manifest.name / f"{manifest.version}-{digest}"

    def fetch_blob(self, store: Store, key: str, entry: FileEntry, callback: Callback = DEFAULT_CALLBACK) -> bool:
        """Download, verify and keep one blob; False if it was already cached."""
        if self.has_blob(entry):
            return False
        dest = self.blob_path(entry)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{entry.hex}.{uuid.uuid4().hex}"
        try:
            # The backend's own get_file (one streaming GET on S3) then a local hash: measured faster
            # than hashing while reading through a file object, which on S3 means ranged GETs.
            store.get_file(key, tmp, callback=_Advance(callback))
            size = tmp.stat().st_size
            h = hashlib.sha256()
            if size == entry.size:
                with open(tmp, "rb") as f:
                    while block := f.read(8 * 2**20):
                        h.update(block)
            if size != entry.size or h.hexdigest() != entry.hex:
                raise DigestMismatchError(
                    f"blob {entry.digest} ({entry.path}) is corrupt in the registry: expected {entry.size} bytes "
                    f"with that sha256, got {size} bytes hashing to sha256:{h.hexdigest()}; "
                    "republish the package or restore the blob",
                    digest=entry.digest,
                    path=entry.path,
                )
            os.replace(tmp, dest)
            os.chmod(dest, 0o444)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def assemble(self, manifest: Manifest) -> Path:
        """The package folder for a manifest whose blobs are all cached."""
        final = self.package_dir(manifest)
        if final.is_dir():
            return final
        tmp = final.parent / f".tmp-{final.name}.{uuid.uuid4().hex}"
        try:
            for entry in manifest.model.files:
                target = tmp / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self.blob_path(entry), target)
                except OSError:
                    shutil.copyfile(self.blob_path(entry), target)
            (tmp / "memreg.json").write_text(manifest.model_dump_json(indent=2))
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # somebody else assembled it first: theirs is as good
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final
