"""Publishing a folder: hash -> upload missing blobs -> lease and re-check them -> create the
manifest (the commit point) -> move tags.

Versions are immutable, so publishing the same content again is a no-op that still heals blobs lost
or corrupted in the store since; different content under an existing version is refused. Blobs are
uploaded before their manifest exists, so a concurrent gc (registry/gc.py) could delete them: a
lease names them first, and they are checked again once the manifest protects them.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from memreg.registry import index as name_index
from memreg.registry.card import with_model_card
from memreg.core.errors import InvalidArgumentError, ManifestNotFoundError, VersionExistsError
from memreg.core.fsutil import TMP_PREFIX, file_digest, locked_temp, no_progress
from memreg.registry.layout import blob_key, lease_key, manifest_key
from memreg.registry.package import CARD, LocalFile, model_info, read_card, scan_folder
from memreg.registry.refs import check_name, check_version
from memreg.core.settings import cards_dir
from memreg.registry.store import Store
from memreg.registry.tagging import refuse_latest
from memreg.schemas import DomainMetadata, FileEntry, Lease, Manifest, PackageCard

if TYPE_CHECKING:
    from fsspec.callbacks import Callback

    from memreg.registry.api import Registry


@dataclass(frozen=True)
class PublishResult:
    manifest: Manifest
    created: bool  # False: the same content was already published (a no-op)
    uploaded: int  # blobs uploaded
    skipped: int  # blobs already present
    tags: dict[str, str | None] = field(default_factory=dict)  # tag -> previous version
    healed: int = 0  # blobs found missing or corrupt in the store and uploaded again


def publish(reg: Registry, folder: str | Path, *, name: str | None, version: str | None, description: str | None,
            domain: DomainMetadata | None, tags: Iterable[str], callback: Callback | None) -> PublishResult:
    """Registry.publish (its defaults are there, in one place), one named step at a time: names and
    tags are checked before any file is hashed."""
    callback = no_progress(callback)
    folder = Path(folder)
    card = read_card(folder)
    if not (name or card.name) or not (version or card.version):
        raise InvalidArgumentError(f"{folder} has no {CARD} card that names the package and its version: give "
                                   "name= and version=, e.g. publish(folder, name='law', version='1.0.0')")
    name = check_name(name or card.name or "")
    version = check_version(version or card.version or "", name=name)
    tags = [check_name(t, what="tag") for t in tags]
    for t in tags:
        refuse_latest(t)
    with _card_staging() as staging:
        files, entries, manifest = _describe(folder, card, name, version, description, domain, callback, staging)
        existing = _existing_manifest(reg, manifest)
        if existing is not None:  # same content again: still heal blobs lost or corrupted since
            with _lease(reg.store, existing.model.files):
                healed = _heal(reg.store, files, existing.model.files, reused=existing.model.files)
            return PublishResult(existing, created=False, uploaded=healed, skipped=len(entries) - healed,
                                 tags=_move_tags(reg, existing, tags), healed=healed)
        uploaded, reused = _upload_missing(reg.store, files, entries, callback)
        with _lease(reg.store, entries):
            healed = _heal(reg.store, files, entries, reused=reused)
            committed, created = _commit(reg, manifest)
            if created:
                # A gc that listed the leases just before ours was written may still have deleted a blob
                # between our check and the manifest: look again now that the manifest protects them.
                healed += _heal_missing(reg.store, files, entries)
    name_index.published(reg.store, committed)
    return PublishResult(committed, created=created, uploaded=uploaded + healed,
                         skipped=len(entries) - uploaded - healed, tags=_move_tags(reg, committed, tags), healed=healed)


@contextmanager
def _card_staging() -> Iterator[Path]:
    """A folder of this publish's own for the model card it renders, removed when the publish ends
    however it ends; locked while it lives, so `memreg cache clean` removes only a killed publish's."""
    cards_dir().mkdir(parents=True, exist_ok=True)
    with locked_temp(cards_dir() / f"{TMP_PREFIX}publish.{uuid.uuid4().hex}", folder=True) as staging:
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _describe(folder: Path, card: PackageCard, name: str, version: str, description: str | None,
              domain: DomainMetadata | None, callback: Callback,
              staging: Path) -> tuple[list[LocalFile], list[FileEntry], Manifest]:
    """Hash the folder's files and build the manifest that will describe them, model card included."""
    from memreg.registry.fingerprinting import fingerprint

    files = scan_folder(folder)
    callback.set_size(2 * sum(f.size for f in files))  # hashing, then uploading
    entries = [FileEntry(path=f.path, digest=file_digest(f.local, callback), size=f.size) for f in files]
    manifest = Manifest(
        name=name,
        version=version,
        description=description if description is not None else (card.description or ""),
        created_at=datetime.now(timezone.utc),
        memreg_version=_memreg_version(),
        domain=domain or card.domain,
        tokenizer=fingerprint(folder),
        model=model_info(folder, entries),
        training=card.training,
        metrics=card.metrics,
    )
    return with_model_card(folder, files, entries, manifest, staging)  # README.md: the card


def _upload_missing(store: Store, files: list[LocalFile], entries: list[FileEntry],
                    callback: Callback) -> tuple[int, list[FileEntry]]:
    """Upload the blobs the store lacks; the number uploaded and the entries found already there."""
    uploaded, reused = 0, []
    for f, entry in zip(files, entries):
        if store.exists(blob_key(entry)):
            reused.append(entry)  # re-checked by _heal, under the lease that protects it from gc
            callback.relative_update(entry.size)
            continue
        store.put_file(blob_key(entry), f.local, callback=callback.branched(str(f.local), blob_key(entry)))
        callback.relative_update(entry.size)
        uploaded += 1
    return uploaded, reused


def _commit(reg: Registry, manifest: Manifest) -> tuple[Manifest, bool]:
    """Create the manifest, the commit point: (the manifest now published, whether we created it).
    A publisher that lost the race to the same content has still published it."""
    name_index.announce(reg.store, manifest.name, manifest.version)  # before the manifest: see registry/index.py
    try:
        reg.store.create(manifest_key(manifest.name, manifest.version), manifest.model_dump_json(indent=2).encode())
    except FileExistsError:
        existing = _existing_manifest(reg, manifest)  # lost a race: same content is still fine
        if existing is None:  # pragma: no cover - _existing_manifest raises on different content
            raise
        return existing, False
    return manifest, True


def _heal(store: Store, files: list[LocalFile], entries: list[FileEntry], *, reused: list[FileEntry]) -> int:
    """Under a lease (gc keeps leased blobs), check every blob this publish relies on: a reused
    blob must hold our exact bytes (size and digest, see Store.same_content), any other must exist
    with our size. Re-upload what fails."""
    local = {f.path: f.local for f in files}
    reused_keys = {blob_key(e) for e in reused}
    healed = 0
    for entry in entries:
        key = blob_key(entry)
        if key in reused_keys:
            ok = store.same_content(key, local[entry.path], entry.hex, entry.size)
        else:
            ok = _has_size(store, key, entry.size)
        if not ok:
            store.put_file(key, local[entry.path])
            healed += 1
    return healed


def _heal_missing(store: Store, files: list[LocalFile], entries: list[FileEntry]) -> int:
    local = {f.path: f.local for f in files}
    missing = [e for e in entries if not _has_size(store, blob_key(e), e.size)]
    for entry in missing:
        store.put_file(blob_key(entry), local[entry.path])
    return len(missing)


def _has_size(store: Store, key: str, size: int) -> bool:
    try:
        return store.size(key) == size
    except FileNotFoundError:
        return False


@contextmanager
def _lease(store: Store, entries: list[FileEntry]) -> Iterator[None]:
    """A lease is a small document (docs/format.md) naming blobs a publish is about to reference. After
    a publish it is left in place and expires after LEASE_TTL (gc removes it): a gc whose snapshot
    of the manifests predates this publish's manifest still sees the lease. A publish that fails
    (a full disk, a lost connection) removes it: nothing it protected is referenced."""
    lease = Lease(created_at=datetime.now(timezone.utc), blobs=sorted({blob_key(e) for e in entries}))
    key = lease_key(uuid.uuid4().hex)
    store.put_bytes(key, lease.model_dump_json().encode())
    try:
        yield
    except BaseException:
        with suppress(Exception):  # the publish's own error is the one to report; LEASE_TTL expires it anyway
            store.delete(key)
        raise


def _existing_manifest(reg: Registry, new: Manifest) -> Manifest | None:
    try:
        old = reg.manifest(new.name, new.version)
    except ManifestNotFoundError:
        return None
    if old.content_key() != new.content_key():
        raise VersionExistsError(
            f"{new.ref} already exists in {reg.url} with different content; versions are immutable: "
            "publish under a new version (e.g. bump the patch number)"
        )
    return old


def _move_tags(reg: Registry, manifest: Manifest, tags: list[str]) -> dict[str, str | None]:
    return {t: reg.tag(manifest.ref, t).previous for t in tags}


def _memreg_version() -> str:
    from memreg import __version__

    return __version__
