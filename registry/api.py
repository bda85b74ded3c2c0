"""The registry: publish, resolve, pull, list, verify, tag, yank, gc over one Store.

This module is the front door (the Registry class) and keeps reading and pulling; each other job
has its module: publishing.py, verifying.py, tagging.py (tags and yanks), gc.py, index.py (package
indexes), layout.py (where every document lives).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memreg.registry import index as name_index
from memreg.registry import publishing, tagging, verifying
from memreg.registry.cache import Cache
from memreg.core.errors import (
    BlobNotFoundError,
    ManifestError,
    ManifestNotFoundError,
    RegistryNotFoundError,
)
from memreg.core.fsutil import no_progress
# LEASE_TTL, LEASES, UPLOAD_FLOOR, check_grace: imported from here by code older than registry/gc.py
from memreg.registry.gc import LEASE_TTL, UPLOAD_FLOOR, GcReport, check_grace, collect_garbage  # noqa: F401
from memreg.registry.layout import (  # noqa: F401 (LEASES: see above)
    LEASES,
    MARKER,
    PACKAGES,
    VIRTUAL_LATEST,
    blob_key,
    manifest_key,
    package_prefix,
    stem,
    tag_key,
    tags_prefix,
)
from memreg.registry.publishing import PublishResult
from memreg.registry.reading import checked_manifest, parse, valid, warn
from memreg.registry.refs import Ref, check_name, check_version, parse_ref, version_key
from memreg.core.settings import default_registry_url, memreg_home
from memreg.registry.store import Store, open_store
from memreg.registry.tagging import TagMove
from memreg.registry.verifying import VerifyReport
from memreg.schemas import (
    FORMAT_VERSION,
    DomainMetadata,
    Manifest,
    RegistryMarker,
    TagPointer,
    TokenizerFingerprint,
    UnsupportedFormatError,
    VersionSummary,
    YankRecord,
)

if TYPE_CHECKING:
    from fsspec.callbacks import Callback


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
        marker = RegistryMarker(created_at=datetime.now(timezone.utc))
        try:
            store.create(MARKER, marker.model_dump_json(indent=2).encode())
        except FileExistsError:
            pass
        reg = cls(store)
        reg._check_marker()
        return reg

    def _check_marker(self) -> None:
        raw = self.store.read(MARKER)
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise ManifestError(f"{self.store.url}/{MARKER} is not valid JSON: {e}") from e
        version = doc.get("format_version") if isinstance(doc, dict) else None
        if version != FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"registry {self.store.url} has format_version {version!r}: "
                f"this memreg reads format {FORMAT_VERSION}; upgrade memreg"
            )
        parse(RegistryMarker, raw, f"{self.store.url}/{MARKER}")

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
        callback: Callback | None = None,
    ) -> PublishResult:
        """hash -> upload missing blobs -> create the manifest (the commit point) -> move tags;
        see registry/publishing.py."""
        return publishing.publish(self, folder, name=name, version=version, description=description,
                                  domain=domain, tags=tags, callback=callback)

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
        seen = {key.split("/")[1] for key in self.store.list(PACKAGES) if key.count("/") >= 2}
        return sorted(n for n in seen if valid(check_name, n, f"{self.url}/{package_prefix(n)}/", "not a valid package name"))

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
        for key in self.store.list(tags_prefix(check_name(name))):
            if key.endswith(".json"):
                tags.append(stem(key))
            else:
                warn(f"{self.url}/{key}: not <tag>.json; ignored")
        docs = self.store.read_many([tag_key(name, t) for t in tags])
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
                raw = self.store.read(tag_key(r.name, r.tag))
            except FileNotFoundError:
                raise ManifestNotFoundError(f"{r} does not exist: `memreg show {r.name}` lists its tags") from None
            return self.manifest(r.name, parse(TagPointer, raw, str(r)).version)
        return self._latest(r.name, name_index.list_package(self.store, r.name))

    def _latest(self, name: str, listing: name_index.Listing) -> Manifest:
        """The highest version that is not yanked, from one listing of the package (list_package)."""
        manifests, yanked, _ = listing
        every = sorted(manifests, key=version_key)
        m = self._highest_valid(name, [v for v in every if v not in yanked])
        if m is None:
            raise ManifestNotFoundError(
                f"no version of {name!r} to use in {self.url}"
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
        for state in name_index.read_all(self.store, latest_only=not all_versions).values():
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

    def show(self, ref: str | Ref) -> tuple[Manifest, name_index.PackageState]:
        """`memreg show`: the manifest `ref` resolves to and its package's state (Registry.package),
        fetched at once; a bare name is resolved from the same listing of the package that the
        state is built from (one listing, not two)."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.version or (r.tag and r.tag != VIRTUAL_LATEST):
            m, state = self.store.together(lambda: self.resolve(r), lambda: self.package(r.name))
        else:
            fetched = name_index.fetch_one(self.store, r.name)
            m, state = self.store.together(lambda: self._latest(r.name, fetched[1]),
                                           lambda: name_index.read_one(self.store, r.name, fetched))
        name_index.correct_summary(self.store, m, state)
        return m, state

    def rebuild_index(self) -> list[str]:
        """Rewrite every package index from the manifests and tags (`memreg verify --repair`)."""
        return name_index.rebuild(self.store)

    # pull --------------------------------------------------------------------------------
    def pull(self, ref: str | Ref | Manifest, *, callback: Callback | None = None, verify: bool = False) -> Path:
        """Local folder of the verified package; blobs already cached are not downloaded again.

        The cached folder is re-checked on every pull (size and mtime of each file against the
        record written when it was verified; every byte re-hashed with `verify`): anything
        changed since is fetched again, so a tampered cache heals instead of being served."""
        m = ref if isinstance(ref, Manifest) else self.resolve(ref)  # a Manifest: resolved already
        self.cache.clean_abandoned()  # temp files of killed pulls
        if self.cache.package_ok(m, verify=verify):
            return self.cache.package_dir(m)
        callback = no_progress(callback)  # bytes move from here on
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
    def verify(self, ref: str | Ref | None = None, *, callback: Callback | None = None) -> VerifyReport:
        """Re-hash every blob of one version, or of every version in the registry. Each blob is
        read once; every reference to it is checked against what was read (digest and its own
        declared size). A malformed manifest is a problem of its own, never the end of the check."""
        return verifying.verify(self, ref, callback)

    # tags and yanks ----------------------------------------------------------------------
    def tag(self, ref: str | Ref, tag: str, *, retries: int = 50, force: bool = False) -> TagMove:
        """Point `name:tag` at the version `ref` resolves to, by compare-and-swap.

        A lost race re-reads and tries again, so every successful move reports the version it
        really replaced: concurrent movers form one chain and no update is lost silently.
        A yanked version is refused unless `force`; a yank that lands during the move is seen by a
        second look after the swap, which moves the tag back.
        """
        return tagging.move_tag(self, ref, tag, retries=retries, force=force)

    def yank(self, ref: str | Ref, reason: str = "") -> Manifest:
        return tagging.yank(self, ref, reason)

    def yank_record(self, name: str, version: str) -> YankRecord | None:
        """Why and when name@version was yanked (None: it is not)."""
        return tagging.yank_record(self, name, version)

    def unyank(self, ref: str | Ref) -> Manifest:
        """Undo a yank: `name` and `name:latest` may choose the version again. Unyanking a version
        that is not yanked is a no-op, as yanking twice is."""
        return tagging.unyank(self, ref)

    # gc ----------------------------------------------------------------------------------
    def gc(self, *, grace: timedelta = timedelta(hours=24), dry_run: bool = False) -> GcReport:
        """Delete unreferenced blobs and stale uploads older than `grace`; see registry/gc.py."""
        return collect_garbage(self.store, grace=grace, dry_run=dry_run)


def _same_ids(fp: TokenizerFingerprint, wanted: str | TokenizerFingerprint) -> bool:
    from memreg.registry.fingerprinting import pad_only_difference

    if isinstance(wanted, str):
        return fp.digest == wanted
    return fp.digest == wanted.digest or pad_only_difference(fp, wanted, "a", "b") is not None
