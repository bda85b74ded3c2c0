"""The registry: publish, resolve, pull, list, verify, tag, yank, gc over one Store.

Layout (format v1):
    memreg-registry.json                    marker
    blobs/sha256/<2 hex>/<64 hex>           immutable file bodies
    packages/<name>/<version>.json          immutable manifests, created exactly once
    packages/<name>/tags/<tag>.json         mutable pointers, moved by compare-and-swap
    packages/<name>/yanked/<version>.json   yank records
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fsspec.callbacks import DEFAULT_CALLBACK, Callback

from memreg.registry.cache import Cache
from memreg.registry.errors import (
    ConcurrentUpdateError,
    DigestMismatchError,
    InvalidReferenceError,
    ManifestError,
    ManifestNotFoundError,
    RegistryNotFoundError,
    VersionExistsError,
    first_validation_error,
)
from memreg.registry.package import model_info, read_card, scan_folder, sha256_file
from memreg.registry.refs import Ref, check_name, check_version, parse_ref, version_key
from memreg.registry.settings import default_registry_url, memreg_home
from memreg.registry.store import Store, open_store
from memreg.schemas import (
    FORMAT_VERSION,
    DomainMetadata,
    FileEntry,
    Manifest,
    TagPointer,
    UnsupportedFormatError,
    YankRecord,
)

MARKER = "memreg-registry.json"
VIRTUAL_LATEST = "latest"  # `name:latest` is the highest non-yanked version, never a stored tag


def _now() -> datetime:
    return datetime.now(timezone.utc)


def blob_key(entry: FileEntry) -> str:
    return f"blobs/sha256/{entry.hex[:2]}/{entry.hex}"


def manifest_key(name: str, version: str) -> str:
    return f"packages/{name}/{version}.json"


@dataclass(frozen=True)
class PublishResult:
    manifest: Manifest
    created: bool  # False: the same content was already published (a no-op)
    uploaded: int  # blobs uploaded
    skipped: int  # blobs already present
    tags: dict[str, str | None] = field(default_factory=dict)  # tag -> previous version


@dataclass(frozen=True)
class TagMove:
    name: str
    tag: str
    version: str
    previous: str | None


@dataclass(frozen=True)
class VerifyReport:
    checked_versions: list[str]
    checked_blobs: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class GcReport:
    removed_blobs: list[str]
    removed_bytes: int
    kept_recent: int
    removed_uploads: list[str]


@dataclass(frozen=True)
class PackageSummary:
    manifest: Manifest
    yanked: bool
    tags: list[str]


class Registry:
    """A memreg registry on any fsspec URL."""

    def __init__(self, store: Store, cache: Cache | None = None) -> None:
        self.store = store
        self.cache = cache or Cache()

    # opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str | None = None, *, storage_options: dict[str, Any] | None = None) -> Registry:
        """Open an existing registry. The local default registry is created on first use."""
        url = url or default_registry_url()
        store = open_store(url, storage_options)
        reg = cls(store)
        if not store.exists(MARKER):
            if url == str(memreg_home() / "registry"):
                return cls.init(url, storage_options=storage_options)
            raise RegistryNotFoundError(f"no memreg registry at {url}: create one with `memreg init {url}`")
        reg._check_marker()
        return reg

    @classmethod
    def init(cls, url: str, *, storage_options: dict[str, Any] | None = None) -> Registry:
        store = open_store(url, storage_options)
        doc = {"format_version": FORMAT_VERSION, "created_at": _now().isoformat()}
        try:
            store.create(MARKER, json.dumps(doc, indent=2).encode())
        except FileExistsError:
            pass
        reg = cls(store)
        reg._check_marker()
        return reg

    def _check_marker(self) -> None:
        try:
            doc = json.loads(self.store.read(MARKER))
        except ValueError as e:
            raise ManifestError(f"{self.store.url}/{MARKER} is not valid JSON: {e}") from e
        if doc.get("format_version") != FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"registry {self.store.url} has format_version {doc.get('format_version')!r}: "
                f"this memreg reads format {FORMAT_VERSION}; upgrade memreg"
            )

    @property
    def url(self) -> str:
        return self.store.url

    # publish -----------------------------------------------------------------------------
    def publish(
        self,
        folder: str | Path,
        *,
        name: str | None = None,
        version: str | None = None,
        description: str | None = None,
        domain: DomainMetadata | None = None,
        tags: Iterable[str] = (),
        callback: Callback = DEFAULT_CALLBACK,
    ) -> PublishResult:
        """hash -> upload missing blobs -> create the manifest (the commit point) -> move tags."""
        from memreg.registry.fingerprinting import fingerprint

        folder = Path(folder)
        card = read_card(folder)
        name = check_name(name or card.name or "")
        version = check_version(version or card.version or "", name=name)
        tags = [check_name(t, what="tag") for t in tags]
        for t in tags:
            _refuse_latest(t)
        files = scan_folder(folder)
        callback.set_size(2 * sum(f.size for f in files))  # hashing, then uploading
        entries = [FileEntry(path=f.path, digest=sha256_file(f.local, callback), size=f.size) for f in files]
        manifest = Manifest(
            name=name,
            version=version,
            description=description if description is not None else (card.description or ""),
            created_at=_now(),
            memreg_version=_memreg_version(),
            domain=domain or card.domain,
            tokenizer=fingerprint(folder),
            model=model_info(folder, entries),
            training=card.training,
            metrics=card.metrics,
        )
        existing = self._existing_manifest(manifest)
        if existing is not None:
            return PublishResult(existing, created=False, uploaded=0, skipped=len(entries),
                                 tags=self._move_tags(existing, tags))
        uploaded = skipped = 0
        for f, entry in zip(files, entries):
            key = blob_key(entry)
            if self.store.exists(key) and self.store.size(key) == entry.size:
                skipped += 1
                callback.relative_update(entry.size)
                continue
            self.store.put_file(key, f.local, callback=callback.branched(str(f.local), key) or DEFAULT_CALLBACK)
            callback.relative_update(entry.size)
            uploaded += 1
        try:
            self.store.create(manifest_key(name, version), manifest.model_dump_json(indent=2).encode())
        except FileExistsError:
            existing = self._existing_manifest(manifest)  # lost a race: same content is still fine
            if existing is None:  # pragma: no cover - _existing_manifest raises on different content
                raise
            return PublishResult(existing, created=False, uploaded=uploaded, skipped=skipped,
                                 tags=self._move_tags(existing, tags))
        return PublishResult(manifest, created=True, uploaded=uploaded, skipped=skipped,
                             tags=self._move_tags(manifest, tags))

    def _existing_manifest(self, new: Manifest) -> Manifest | None:
        try:
            old = self.manifest(new.name, new.version)
        except ManifestNotFoundError:
            return None
        if old.content_key() != new.content_key():
            raise VersionExistsError(
                f"{new.ref} already exists in {self.url} with different content; versions are immutable: "
                "publish under a new version (e.g. bump the patch number)"
            )
        return old

    def _move_tags(self, manifest: Manifest, tags: list[str]) -> dict[str, str | None]:
        return {t: self.tag(manifest.ref, t).previous for t in tags}

    # reading -----------------------------------------------------------------------------
    def manifest(self, name: str, version: str) -> Manifest:
        key = manifest_key(check_name(name), check_version(version, name=name))
        try:
            raw = self.store.read(key)
        except FileNotFoundError:
            raise ManifestNotFoundError(f"{name}@{version} is not in {self.url}: `memreg list` shows what is") from None
        return _parse(Manifest, raw, f"{self.url}/{key}")

    def names(self) -> list[str]:
        return sorted({k.split("/")[1] for k in self.store.list("packages") if k.count("/") == 2})

    def versions(self, name: str, *, include_yanked: bool = True) -> list[str]:
        check_name(name)
        keys = self.store.list(f"packages/{name}")
        versions = [k.rsplit("/", 1)[1][: -len(".json")] for k in keys if k.count("/") == 2 and k.endswith(".json")]
        versions = sorted(versions, key=version_key)
        if not include_yanked:
            yanked = self.yanked(name)
            versions = [v for v in versions if v not in yanked]
        return versions

    def yanked(self, name: str) -> set[str]:
        return {k.rsplit("/", 1)[1][: -len(".json")] for k in self.store.list(f"packages/{name}/yanked")}

    def tags(self, name: str) -> dict[str, str]:
        out = {}
        for key in self.store.list(f"packages/{name}/tags"):
            ptr = _parse(TagPointer, self.store.read(key), f"{self.url}/{key}")
            out[ptr.tag] = ptr.version
        return out

    def resolve(self, ref: str | Ref) -> Manifest:
        """`name@1.2.0` exactly (yanked too); `name:tag` via the tag; `name`/`name:latest`: the
        highest version that is not yanked."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.version:
            return self.manifest(r.name, r.version)
        if r.tag and r.tag != VIRTUAL_LATEST:
            try:
                raw = self.store.read(f"packages/{r.name}/tags/{r.tag}.json")
            except FileNotFoundError:
                raise ManifestNotFoundError(f"{r} does not exist: `memreg show {r.name}` lists its tags") from None
            return self.manifest(r.name, _parse(TagPointer, raw, str(r)).version)
        versions = self.versions(r.name, include_yanked=False)
        if not versions:
            raise ManifestNotFoundError(
                f"no version of {r.name!r} to use in {self.url}"
                + (" (all are yanked; name one as name@VERSION)" if self.versions(r.name) else ": `memreg list` shows what is")
            )
        return self.manifest(r.name, versions[-1])

    def list(self, *, domain: str | None = None, fingerprint: str | None = None,
             all_versions: bool = False) -> list[PackageSummary]:
        out = []
        for name in self.names():
            yanked = self.yanked(name)
            tags = self.tags(name)
            versions = self.versions(name)
            if not all_versions:
                live = [v for v in versions if v not in yanked]
                versions = live[-1:]
            for v in versions:
                m = self.manifest(name, v)
                if domain and domain not in m.domain.labels:
                    continue
                if fingerprint and m.tokenizer.digest != fingerprint:
                    continue
                out.append(PackageSummary(m, v in yanked, sorted(t for t, tv in tags.items() if tv == v)))
        return out

    # pull --------------------------------------------------------------------------------
    def pull(self, ref: str | Ref, *, callback: Callback = DEFAULT_CALLBACK) -> Path:
        """Local folder of the verified package; blobs already cached are not downloaded again."""
        m = self.resolve(ref)
        folder = self.cache.package_dir(m)
        if folder.is_dir():
            return folder
        callback.set_size(sum(e.size for e in m.model.files if not self.cache.has_blob(e)))
        for entry in m.model.files:
            try:
                self.cache.fetch_blob(self.store, blob_key(entry), entry, callback)
            except FileNotFoundError:
                raise DigestMismatchError(
                    f"blob {entry.digest} ({entry.path}) of {m.ref} is missing from {self.url}; republish the package",
                    digest=entry.digest, path=entry.path,
                ) from None
        return self.cache.assemble(m)

    # verify ------------------------------------------------------------------------------
    def verify(self, ref: str | Ref | None = None, *, callback: Callback = DEFAULT_CALLBACK) -> VerifyReport:
        """Re-hash every blob of one version, or of every version in the registry."""
        if ref is not None:
            manifests = [self.resolve(ref)]
        else:
            manifests = [self.manifest(n, v) for n in self.names() for v in self.versions(n)]
        problems: list[str] = []
        seen: dict[str, str | None] = {}
        callback.set_size(sum(e.size for m in manifests for e in m.model.files))
        for m in manifests:
            for entry in m.model.files:
                if entry.digest not in seen:
                    seen[entry.digest] = self._check_blob(entry, callback)
                if seen[entry.digest]:
                    problems.append(f"{m.ref}: {entry.path}: {seen[entry.digest]}")
        return VerifyReport([m.ref for m in manifests], len(seen), problems)

    def _check_blob(self, entry: FileEntry, callback: Callback) -> str | None:
        key = blob_key(entry)
        h, size = hashlib.sha256(), 0
        try:
            with self.store.open_read(key) as f:
                while block := f.read(8 * 2**20):
                    h.update(block)
                    size += len(block)
                    callback.relative_update(len(block))
        except FileNotFoundError:
            return f"blob {entry.digest} is missing"
        if size != entry.size:
            return f"blob {entry.digest} has {size} bytes, expected {entry.size}"
        if h.hexdigest() != entry.hex:
            return f"blob {entry.digest} is corrupt (its bytes hash to sha256:{h.hexdigest()})"
        return None

    # tags and yanks ----------------------------------------------------------------------
    def tag(self, ref: str | Ref, tag: str, *, retries: int = 50) -> TagMove:
        """Point `name:tag` at the version `ref` resolves to, by compare-and-swap.

        A lost race re-reads and tries again, so every successful move reports the version it
        really replaced: concurrent movers form one chain and no update is lost silently.
        """
        check_name(tag, what="tag")
        _refuse_latest(tag)
        m = self.resolve(ref)
        key = f"packages/{m.name}/tags/{tag}.json"
        doc = TagPointer(name=m.name, tag=tag, version=m.version, updated_at=_now())
        body = doc.model_dump_json(indent=2).encode()
        for _ in range(retries):
            try:
                raw, etag = self.store.read_with_etag(key)
                previous = _parse(TagPointer, raw, key).version
            except FileNotFoundError:
                etag, previous = None, None
            try:
                self.store.swap(key, body, expected=etag)
                return TagMove(m.name, tag, m.version, previous)
            except ConcurrentUpdateError:
                continue
        raise ConcurrentUpdateError(f"{m.name}:{tag} kept changing under {retries} attempts; try again")

    def yank(self, ref: str | Ref, reason: str = "") -> Manifest:
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if not r.version:
            raise InvalidReferenceError(f"yank takes an exact version: name@VERSION, not {r}")
        m = self.manifest(r.name, r.version)
        rec = YankRecord(name=m.name, version=m.version, reason=reason, yanked_at=_now())
        try:
            self.store.create(f"packages/{m.name}/yanked/{m.version}.json", rec.model_dump_json(indent=2).encode())
        except FileExistsError:
            pass  # yanking twice is a no-op
        return m

    # gc ----------------------------------------------------------------------------------
    def gc(self, *, grace: timedelta = timedelta(hours=24), dry_run: bool = False) -> GcReport:
        """Delete blobs that no manifest references and leftovers of interrupted uploads, older
        than `grace` (a publisher may be uploading blobs whose manifest does not exist yet)."""
        referenced = {blob_key(e) for n in self.names() for v in self.versions(n)
                      for e in self.manifest(n, v).model.files}
        cutoff = _now() - grace
        removed, removed_bytes, kept = [], 0, 0
        for key in self.store.list("blobs"):
            if key in referenced:
                continue
            if self.store.modified(key) > cutoff:
                kept += 1
                continue
            removed_bytes += self.store.size(key)
            removed.append(key)
            if not dry_run:
                self.store.delete(key)
        uploads = [k for k, t in self.store.stale_uploads() if t <= cutoff]
        if not dry_run:
            for k in uploads:
                self.store.remove_stale_upload(k)
        return GcReport(removed, removed_bytes, kept, uploads)


def _refuse_latest(tag: str) -> None:
    if tag == VIRTUAL_LATEST:
        raise InvalidReferenceError(
            "'latest' is not a tag you can move: name:latest always means the highest version that is not yanked"
        )


def _parse(model: Any, raw: bytes, where: str) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValueError as e:
        raise ManifestError(f"{where} is not a valid {model.__name__}: {first_validation_error(e)}") from e


def _memreg_version() -> str:
    from memreg import __version__

    return __version__
