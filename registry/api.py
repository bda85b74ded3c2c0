"""The registry: publish, resolve, pull, list, verify, tag, yank, gc over one Store.

Layout (format v1):
    memreg-registry.json                    marker
    blobs/sha256/<2 hex>/<64 hex>           immutable file bodies
    packages/<name>/<version>.json          immutable manifests, created exactly once
    packages/<name>/tags/<tag>.json         mutable pointers, moved by compare-and-swap
    packages/<name>/yanked/<version>.json   yank records
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fsspec.callbacks import DEFAULT_CALLBACK, Callback

from memreg.registry.cache import Cache
from memreg.registry.card import with_model_card
from memreg.registry import index as name_index
from memreg.registry.gc import LEASE_TTL, LEASES, UPLOAD_FLOOR, GcReport, check_grace, collect_garbage  # noqa: F401
from memreg.registry.errors import (
    ConcurrentUpdateError,
    BlobNotFoundError,
    DigestMismatchError,
    InvalidReferenceError,
    ManifestError,
    ManifestNotFoundError,
    RegistryNotFoundError,
    VersionExistsError,
    YankedVersionError,
)
from memreg.registry.fsutil import file_digest, sha256_stream
from memreg.registry.package import model_info, read_card, scan_folder
from memreg.registry.reading import checked_manifest, parse, valid, warn
from memreg.registry.refs import Ref, check_name, check_version, parse_ref, version_key
from memreg.registry.settings import default_registry_url, memreg_home
from memreg.registry.store import Store, open_store
from memreg.schemas import (
    FORMAT_VERSION,
    DomainMetadata,
    FileEntry,
    Manifest,
    TagPointer,
    TokenizerFingerprint,
    UnsupportedFormatError,
    VersionSummary,
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
    healed: int = 0  # blobs found missing or corrupt in the store and uploaded again


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
class PackageSummary:
    manifest: VersionSummary  # what the index (or the manifest, where the index lacks it) says of the version
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
        try:
            reg._check_marker()  # one GET: every command pays for it
        except FileNotFoundError:
            if url == str(memreg_home() / "registry"):
                return cls.init(url, storage_options=storage_options)
            raise RegistryNotFoundError(f"no memreg registry at {url}: create one with `memreg init {url}`") from None
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
        entries = [FileEntry(path=f.path, digest=file_digest(f.local, callback), size=f.size) for f in files]
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
        files, entries, manifest = with_model_card(folder, files, entries, manifest)  # README.md: the card
        existing = self._existing_manifest(manifest)
        if existing is not None:  # same content again: still heal blobs lost or corrupted since
            healed = self._protect_and_heal(files, existing.model.files, reused=existing.model.files)
            return PublishResult(existing, created=False, uploaded=healed, skipped=len(entries) - healed,
                                 tags=self._move_tags(existing, tags), healed=healed)
        uploaded, reused = 0, []
        for f, entry in zip(files, entries):
            if self.store.exists(blob_key(entry)):
                reused.append(entry)  # re-checked below, after the lease that protects it from gc
                callback.relative_update(entry.size)
                continue
            self.store.put_file(blob_key(entry), f.local, callback=callback.branched(str(f.local), blob_key(entry)) or DEFAULT_CALLBACK)
            callback.relative_update(entry.size)
            uploaded += 1
        healed = self._protect_and_heal(files, entries, reused=reused)
        name_index.announce(self.store, name, version)  # before the manifest: see registry/index.py
        try:
            self.store.create(manifest_key(name, version), manifest.model_dump_json(indent=2).encode())
        except FileExistsError:
            existing = self._existing_manifest(manifest)  # lost a race: same content is still fine
            if existing is None:  # pragma: no cover - _existing_manifest raises on different content
                raise
            name_index.published(self.store, existing)
            return PublishResult(existing, created=False, uploaded=uploaded + healed, skipped=len(entries) - uploaded - healed,
                                 tags=self._move_tags(existing, tags), healed=healed)
        # A gc that listed the leases just before ours was written may still have deleted a blob
        # between our check and the manifest: look again now that the manifest protects them.
        healed += self._heal_missing(files, entries)
        name_index.published(self.store, manifest)
        return PublishResult(manifest, created=True, uploaded=uploaded + healed, skipped=len(entries) - uploaded - healed,
                             tags=self._move_tags(manifest, tags), healed=healed)

    def _protect_and_heal(self, files: list, entries: list[FileEntry], *, reused: list[FileEntry]) -> int:
        """Write a lease naming every blob this publish relies on (gc keeps leased blobs), then
        check them: a reused blob must hold our exact bytes (size and digest, see
        Store.same_content), any other must exist with our size. Re-upload what fails."""
        self._write_lease(entries)
        local = {f.path: f.local for f in files}
        reused_keys = {blob_key(e) for e in reused}
        healed = 0
        for entry in entries:
            key = blob_key(entry)
            if key in reused_keys:
                ok = self.store.same_content(key, local[entry.path], entry.hex, entry.size)
            else:
                ok = self._has_size(key, entry.size)
            if not ok:
                self.store.put_file(key, local[entry.path])
                healed += 1
        return healed

    def _heal_missing(self, files: list, entries: list[FileEntry]) -> int:
        local = {f.path: f.local for f in files}
        missing = [e for e in entries if not self._has_size(blob_key(e), e.size)]
        for entry in missing:
            self.store.put_file(blob_key(entry), local[entry.path])
        return len(missing)

    def _has_size(self, key: str, size: int) -> bool:
        try:
            return self.store.size(key) == size
        except FileNotFoundError:
            return False

    def _write_lease(self, entries: list[FileEntry]) -> None:
        """A lease is a small document under leases/ naming blobs a publish is about to reference.
        It is left in place and expires after LEASE_TTL (gc removes it): a gc whose snapshot of the
        manifests predates this publish's manifest still sees the lease."""
        doc = {"created_at": _now().isoformat(), "blobs": sorted({blob_key(e) for e in entries})}
        self.store.put_bytes(f"{LEASES}/{uuid.uuid4().hex}.json", json.dumps(doc).encode())

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
        """The manifest at packages/<name>/<version>.json, refused unless it names that very
        package and version and lists files memreg could have published (see files_problem)."""
        key = manifest_key(check_name(name), check_version(version, name=name))
        try:
            raw = self.store.read(key)
        except FileNotFoundError:
            raise ManifestNotFoundError(f"{name}@{version} is not in {self.url}: `memreg list` shows what is") from None
        return checked_manifest(raw, name, version, f"{self.url}/{key}")

    def names(self) -> list[str]:
        """Package names; a folder under packages/ that is not a valid name is skipped with a warning."""
        seen = {key.split("/")[1] for key in self.store.list("packages") if key.count("/") >= 2}
        return sorted(n for n in seen if valid(check_name, n, f"{self.url}/packages/{n}/", "not a valid package name"))

    def versions(self, name: str, *, include_yanked: bool = True) -> list[str]:
        versions, yanked = self._listing(name)
        return versions if include_yanked else [v for v in versions if v not in yanked]

    def yanked(self, name: str) -> set[str]:
        return self._listing(name)[1]

    def _listing(self, name: str) -> tuple[list[str], set[str]]:
        """One listing of packages/<name>/: its versions (lowest first) and its yanked versions."""
        manifests, yanked, _ = name_index.list_package(self.store, name)
        return sorted(manifests, key=version_key), yanked

    def tags(self, name: str) -> dict[str, str]:
        """Tag -> version, from the tag pointers (read in one batch); bad ones skipped with a warning."""
        tags = []
        for key in self.store.list(f"packages/{check_name(name)}/tags"):
            if key.endswith(".json"):
                tags.append(key.rsplit("/", 1)[1][: -len(".json")])
            else:
                warn(f"{self.url}/{key}: not <tag>.json; ignored")
        docs = self.store.read_many([f"packages/{name}/tags/{t}.json" for t in tags])
        return name_index.read_tags(self.store, name, tags, docs)

    def manifests(self) -> list[Manifest]:
        """Every valid manifest of the registry; each bad one is skipped with a warning naming it."""
        out = []
        for name in self.names():
            for version in self.versions(name):
                try:
                    out.append(self.manifest(name, version))
                except (ManifestError, FileNotFoundError) as e:
                    warn(str(e))
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
            return self.manifest(r.name, parse(TagPointer, raw, str(r)).version)
        every, yanked = self._listing(r.name)
        m = self._highest_valid(r.name, [v for v in every if v not in yanked])
        if m is None:
            raise ManifestNotFoundError(
                f"no version of {r.name!r} to use in {self.url}"
                + (" (all are yanked; name one as name@VERSION)" if every else ": `memreg list` shows what is")
            )
        return m

    def _highest_valid(self, name: str, versions: list[str]) -> Manifest | None:
        """The manifest of the highest version that is valid; bad ones above it are skipped with a
        warning. None if there are no versions; the highest one's error if none is valid."""
        errors: list[Exception] = []
        for v in reversed(versions):
            try:
                m = self.manifest(name, v)
            except (ManifestError, FileNotFoundError) as e:
                errors.append(e)
                continue
            for e in errors:
                warn(str(e))
            return m
        if errors:
            raise errors[0]
        return None

    def list(self, *, domain: str | None = None, fingerprint: str | TokenizerFingerprint | None = None,
             all_versions: bool = False) -> list[PackageSummary]:
        """Packages (highest non-yanked valid version, or every valid version), from the package
        indexes: one listing of names and one batch of reads (see registry/index.py). `fingerprint`: a digest matches exactly; a whole
        fingerprint (of a model's tokenizer) also matches a memory whose tokenizer differs only in
        its pad id, as compose would accept it."""
        out = []
        for state in name_index.read_all(self.store).values():
            chosen = state.versions() if all_versions else state.versions(include_yanked=False)[-1:]
            for v in chosen:
                summary = state.summaries[v]
                if domain and domain not in summary.domain.labels:
                    continue
                if fingerprint and not _same_ids(state.fingerprints[summary.tokenizer], fingerprint):
                    continue
                out.append(PackageSummary(summary, v in state.yanked, sorted(t for t, tv in state.tags.items() if tv == v)))
        return out

    def package(self, name: str) -> name_index.PackageState:
        """One package's versions, yanks, tags and version summaries, from the truth (one listing of
        the package; only manifests its index cannot summarise are read); repairs the index."""
        return name_index.read_one(self.store, name)

    def rebuild_index(self) -> list[str]:
        """Rewrite every package index from the manifests and tags (`memreg verify --repair`)."""
        return name_index.rebuild(self.store)

    # pull --------------------------------------------------------------------------------
    def pull(self, ref: str | Ref | Manifest, *, callback: Callback = DEFAULT_CALLBACK, verify: bool = False) -> Path:
        """Local folder of the verified package; blobs already cached are not downloaded again.

        The cached folder is re-checked on every pull (size and mtime of each file against the
        record written when it was verified; every byte re-hashed with `verify`): anything
        changed since is fetched again, so a tampered cache heals instead of being served."""
        m = ref if isinstance(ref, Manifest) else self.resolve(ref)  # a Manifest: resolved already
        self.cache.clean_abandoned()  # temp files of killed pulls
        if self.cache.package_ok(m, verify=verify):
            return self.cache.package_dir(m)
        callback.set_size(sum(e.size for e in m.model.files if not self.cache.has_blob(e, verify=verify)))
        for entry in m.model.files:
            try:
                self.cache.fetch_blob(self.store, blob_key(entry), entry, callback, verify=verify)
            except FileNotFoundError:
                raise BlobNotFoundError(
                    f"blob {entry.digest} ({entry.path}) of {m.ref} is missing from {self.url}: republish the same "
                    "folder (publish restores lost blobs of an existing version)",
                    digest=entry.digest, path=entry.path,
                ) from None
        return self.cache.assemble(m, verify=verify)

    # verify ------------------------------------------------------------------------------
    def verify(self, ref: str | Ref | None = None, *, callback: Callback = DEFAULT_CALLBACK) -> VerifyReport:
        """Re-hash every blob of one version, or of every version in the registry. Each blob is
        read once; every reference to it is checked against what was read (digest and its own
        declared size). A malformed manifest is a problem of its own, never the end of the check."""
        problems: list[str] = []
        if ref is not None:
            manifests = [self.resolve(ref)]
        else:
            manifests = []
            for name in self.names():
                versions = self.versions(name)
                raw = self.store.read_many([manifest_key(name, v) for v in versions])  # one batch per package
                for version in versions:
                    key = manifest_key(name, version)
                    try:
                        if raw[key] is None:
                            raise ManifestNotFoundError(f"{name}@{version} vanished from {self.url} while verify ran")
                        manifests.append(checked_manifest(raw[key], name, version, f"{self.url}/{key}"))
                    except (ManifestError, FileNotFoundError) as e:
                        problems.append(str(e))
        seen: dict[str, tuple[int, str] | None] = {}  # digest -> (size, sha256 hex) read, None if missing
        callback.set_size(sum(e.size for m in manifests for e in m.model.files))
        for m in manifests:
            for entry in m.model.files:
                if entry.digest not in seen:
                    seen[entry.digest] = self._read_blob(entry, callback)
                if problem := _blob_problem(entry, seen[entry.digest]):
                    problems.append(f"{m.ref}: {entry.path}: {problem}")
        return VerifyReport([m.ref for m in manifests], len(seen), problems)

    def _read_blob(self, entry: FileEntry, callback: Callback) -> tuple[int, str] | None:
        try:
            with self.store.open_read(blob_key(entry)) as f:
                hexdigest, size = sha256_stream(f, callback)
        except FileNotFoundError:
            return None
        return size, hexdigest

    # tags and yanks ----------------------------------------------------------------------
    def tag(self, ref: str | Ref, tag: str, *, retries: int = 50, force: bool = False) -> TagMove:
        """Point `name:tag` at the version `ref` resolves to, by compare-and-swap.

        A lost race re-reads and tries again, so every successful move reports the version it
        really replaced: concurrent movers form one chain and no update is lost silently.
        A yanked version is refused unless `force`; a yank that lands during the move is seen by a
        second look after the swap, which moves the tag back.
        """
        check_name(tag, what="tag")
        _refuse_latest(tag)
        m = self.resolve(ref)
        if not force and m.version in self.yanked(m.name):
            raise YankedVersionError(f"{m.ref} is yanked: tagging it {m.name}:{tag} would serve it again; "
                                     "unyank it first, or pass --force (force=True)")
        key = f"packages/{m.name}/tags/{tag}.json"
        doc = TagPointer(name=m.name, tag=tag, version=m.version, updated_at=_now())
        body = doc.model_dump_json(indent=2).encode()
        for _ in range(retries):
            try:
                raw, etag = self.store.read_with_etag(key)
                previous = parse(TagPointer, raw, key).version
            except FileNotFoundError:
                raw, etag, previous = None, None, None
            try:
                self.store.swap(key, body, expected=etag)
            except ConcurrentUpdateError:
                continue
            if not force and m.version in self.yanked(m.name):
                self._move_back(key, body, raw)
                name_index.sync_tag(self.store, m.name, tag)
                raise YankedVersionError(f"{m.ref} was yanked while {m.name}:{tag} moved to it: the tag was moved "
                                         "back; unyank it first, or pass --force (force=True)")
            name_index.sync_tag(self.store, m.name, tag)
            return TagMove(m.name, tag, m.version, previous)
        raise ConcurrentUpdateError(f"{m.name}:{tag} kept changing under {retries} attempts; try again")

    def _move_back(self, key: str, ours: bytes, previous: bytes | None) -> None:
        """Undo our own tag write, by compare-and-swap: a mover that came after us keeps its move."""
        try:
            raw, etag = self.store.read_with_etag(key)
        except FileNotFoundError:
            return
        if raw != ours:
            return
        try:
            if previous is None:
                self.store.delete(key)  # there was no tag before: the yanked version must not keep one
            else:
                self.store.swap(key, previous, expected=etag)
        except ConcurrentUpdateError:
            pass  # somebody moved it meanwhile: their move stands

    def yank(self, ref: str | Ref, reason: str = "") -> Manifest:
        m = self.manifest(*_exact(ref, "yank"))
        rec = YankRecord(name=m.name, version=m.version, reason=reason, yanked_at=_now())
        try:
            self.store.create(f"packages/{m.name}/yanked/{m.version}.json", rec.model_dump_json(indent=2).encode())
        except FileExistsError:
            pass  # yanking twice is a no-op
        name_index.set_yanked(self.store, m.name, m.version, True)
        return m

    def unyank(self, ref: str | Ref) -> Manifest:
        """Undo a yank: `name` and `name:latest` may choose the version again. Unyanking a version
        that is not yanked is a no-op, as yanking twice is."""
        m = self.manifest(*_exact(ref, "unyank"))
        self.store.delete(f"packages/{m.name}/yanked/{m.version}.json")  # idempotent: a missing record is fine
        name_index.set_yanked(self.store, m.name, m.version, False)
        return m

    # gc ----------------------------------------------------------------------------------
    def gc(self, *, grace: timedelta = timedelta(hours=24), dry_run: bool = False) -> GcReport:
        """Delete unreferenced blobs and stale uploads older than `grace`; see registry/gc.py."""
        return collect_garbage(self.store, grace=grace, dry_run=dry_run)


def _blob_problem(entry: FileEntry, found: tuple[int, str] | None) -> str | None:
    if found is None:
        return f"blob {entry.digest} is missing"
    size, hexdigest = found
    if size != entry.size:
        return f"blob {entry.digest} has {size} bytes, the manifest declares {entry.size}"
    if hexdigest != entry.hex:
        return f"blob {entry.digest} is corrupt (its bytes hash to sha256:{hexdigest})"
    return None


def _exact(ref: str | Ref, verb: str) -> tuple[str, str]:
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if not r.version:
        raise InvalidReferenceError(f"{verb} takes an exact version: name@VERSION, not {r}")
    return r.name, r.version


def _refuse_latest(tag: str) -> None:
    if tag == VIRTUAL_LATEST:
        raise InvalidReferenceError(
            "'latest' is not a tag you can move: name:latest always means the highest version that is not yanked"
        )


def _memreg_version() -> str:
    from memreg import __version__

    return __version__


def _same_ids(fp: TokenizerFingerprint, wanted: str | TokenizerFingerprint) -> bool:
    from memreg.registry.fingerprinting import pad_only_difference

    if isinstance(wanted, str):
        return fp.digest == wanted
    return fp.digest == wanted.digest or pad_only_difference(fp, wanted, "a", "b") is not None
