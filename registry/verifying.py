"""Verifying what a registry stores: every blob re-hashed against the manifests that reference it.

Each blob is read once, however many versions share it, and every reference is checked against
what was read (digest and its own declared size). A malformed or vanished manifest is a problem of
its own, never the end of the check: verify exists to report damage, so damage must not stop it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from memreg.core.errors import ManifestError, ManifestNotFoundError
from memreg.core.fsutil import no_progress, sha256_stream
from memreg.registry.layout import blob_key, manifest_key
from memreg.registry.reading import checked_manifest
from memreg.registry.refs import Ref
from memreg.registry.store import Store
from memreg.schemas import FileEntry, Manifest

if TYPE_CHECKING:
    from fsspec.callbacks import Callback

    from memreg.registry.api import Registry


@dataclass(frozen=True)
class VerifyReport:
    checked_versions: list[str]
    checked_blobs: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(reg: Registry, ref: str | Ref | None, callback: Callback | None) -> VerifyReport:
    """Registry.verify: one version (`ref`), or every version of the registry."""
    callback = no_progress(callback)
    problems: list[str] = []
    manifests = [reg.resolve(ref)] if ref is not None else _every_manifest(reg, problems)
    seen: dict[str, tuple[int, str] | None] = {}  # digest -> (size, sha256 hex) read, None if missing
    callback.set_size(sum(e.size for m in manifests for e in m.model.files))
    for m in manifests:
        for entry in m.model.files:
            if entry.digest not in seen:
                seen[entry.digest] = _read_blob(reg.store, entry, callback)
            if problem := _blob_problem(entry, seen[entry.digest]):
                problems.append(f"{m.ref}: {entry.path}: {problem}")
    return VerifyReport([m.ref for m in manifests], len(seen), problems)


def _every_manifest(reg: Registry, problems: list[str]) -> list[Manifest]:
    """Every valid manifest, read in one batch per package; each one that is not valid is added
    to `problems`."""
    manifests = []
    for name in reg.names():
        versions = reg.versions(name)
        raw = reg.store.read_many([manifest_key(name, v) for v in versions])
        for version in versions:
            key = manifest_key(name, version)
            try:
                if raw[key] is None:
                    raise ManifestNotFoundError(f"{name}@{version} vanished from {reg.url} while verify ran")
                manifests.append(checked_manifest(raw[key], name, version, f"{reg.url}/{key}"))
            except (ManifestError, FileNotFoundError) as e:
                problems.append(str(e))
    return manifests


def _read_blob(store: Store, entry: FileEntry, callback: Callback) -> tuple[int, str] | None:
    try:
        with store.open_read(blob_key(entry)) as f:
            hexdigest, size = sha256_stream(f, callback)
    except FileNotFoundError:
        return None
    return size, hexdigest


def _blob_problem(entry: FileEntry, found: tuple[int, str] | None) -> str | None:
    if found is None:
        return f"blob {entry.digest} is missing"
    size, hexdigest = found
    if size != entry.size:
        return f"blob {entry.digest} has {size} bytes, the manifest declares {entry.size}"
    if hexdigest != entry.hex:
        return f"blob {entry.digest} is corrupt (its bytes hash to sha256:{hexdigest})"
    return None
