"""Where each document of a registry lives (format 1): every key is built here, and a key is
recognised here, by its place in the layout, never by a substring. docs/format.md is the prose of it.

    memreg-registry.json                    marker (RegistryMarker)
    blobs/sha256/<2 hex>/<64 hex>           immutable file bodies, named by their sha256
    packages/<name>/<version>.json          manifests (Manifest): created exactly once
    packages/<name>/tags/<tag>.json         tag pointers (TagPointer): moved by compare-and-swap
    packages/<name>/yanked/<version>.json   yank records (YankRecord): created once, deleted by unyank
    packages/<name>/signatures/<version>/<64 hex>.json
                                            signatures (SignatureRecord), each named after the sha256
                                            of its own bytes and created once
    index/<name>.json                       package indexes (NameIndex): a cache, by compare-and-swap
    index/_catalog.json                     the catalog (Catalog): a copy of every index, a cache
    leases/<32 hex>.json                    leases (Lease): blobs a publish in flight relies on
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from memreg.schemas import Catalog, FileEntry, Lease, Manifest, NameIndex, RegistryMarker, TagPointer, YankRecord
from memreg.schemas.signature import SignatureRecord

MARKER = "memreg-registry.json"
VIRTUAL_LATEST = "latest"  # `name:latest` is the highest non-yanked version, never a stored tag
BLOBS, PACKAGES, INDEXES, LEASES = "blobs", "packages", "index", "leases"
TAGS, YANKED, SIGNATURES = "tags", "yanked", "signatures"  # folders inside packages/<name>/
CATALOG_KEY = f"{INDEXES}/_catalog.json"  # `_` starts no package name: no index is called this
JSON = ".json"

DocumentKind = Literal["marker", "manifest", "tag", "yank", "signature", "index", "catalog", "lease"]
# the schema of each kind of document: what a reader validates it with
MODELS: dict[DocumentKind, type[BaseModel]] = {
    "marker": RegistryMarker, "manifest": Manifest, "tag": TagPointer, "yank": YankRecord,
    "signature": SignatureRecord, "index": NameIndex, "catalog": Catalog, "lease": Lease,
}


# blobs -----------------------------------------------------------------------------------------
def blob_key(entry: FileEntry) -> str:
    return blob_key_of(entry.hex)


def blob_key_of(hexdigest: str) -> str:
    """The blob of a file body whose sha256 is `hexdigest` (64 lower-case hex digits)."""
    return f"{BLOBS}/sha256/{hexdigest[:2]}/{hexdigest}"


# packages --------------------------------------------------------------------------------------
def package_prefix(name: str) -> str:
    """The folder of every document of one package (its manifests, tags, yanks, signatures)."""
    return f"{PACKAGES}/{name}"


def manifest_key(name: str, version: str) -> str:
    return f"{package_prefix(name)}/{version}{JSON}"


def tags_prefix(name: str) -> str:
    return f"{package_prefix(name)}/{TAGS}"


def tag_key(name: str, tag: str) -> str:
    return f"{tags_prefix(name)}/{tag}{JSON}"


def yank_key(name: str, version: str) -> str:
    return f"{package_prefix(name)}/{YANKED}/{version}{JSON}"


def signatures_prefix(name: str, version: str) -> str:
    return f"{package_prefix(name)}/{SIGNATURES}/{version}"


def signature_key(name: str, version: str, hexdigest: str) -> str:
    return f"{signatures_prefix(name, version)}/{hexdigest}{JSON}"


# indexes, catalog, leases ----------------------------------------------------------------------
def index_key(name: str) -> str:
    return f"{INDEXES}/{name}{JSON}"


def lease_key(lease_id: str) -> str:
    return f"{LEASES}/{lease_id}{JSON}"


# recognising keys ------------------------------------------------------------------------------
def stem(key: str) -> str:
    """The last part of a key without `.json`: a version, a tag, a signature's digest."""
    last = key.rsplit("/", 1)[-1]
    return last[: -len(JSON)] if last.endswith(JSON) else last


@dataclass(frozen=True)
class PackageKey:
    """What a key under packages/ is, by its place in the layout: `stem` is the version of a
    manifest, a yank record or a signature (whose file name is its own digest), the tag of a tag
    pointer."""

    kind: Literal["manifest", "tag", "yank", "signature"]
    name: str
    stem: str


def parse_package_key(key: str) -> PackageKey | None:
    """The document a key names, from its depth and folders, never from a substring: a package
    may be called `tags` or `yanked` (packages/tags/1.0.0.json is a manifest). None: not a
    document of the layout (a stray file, a folder, a key outside packages/)."""
    parts = key.split("/")
    if parts[0] != PACKAGES or not parts[-1].endswith(JSON) or not all(parts):
        return None
    if len(parts) == 3:
        return PackageKey("manifest", parts[1], stem(key))
    if len(parts) == 4 and parts[2] in (TAGS, YANKED):
        return PackageKey("tag" if parts[2] == TAGS else "yank", parts[1], stem(key))
    if len(parts) == 5 and parts[2] == SIGNATURES:  # deeper than any other document: no name clash
        return PackageKey("signature", parts[1], parts[3])
    return None


def document_kind(key: str) -> DocumentKind | None:
    """Which kind of document `key` is (MODELS gives its schema); None for a blob or a stray key."""
    if key == MARKER:
        return "marker"
    if key == CATALOG_KEY:
        return "catalog"
    parts = key.split("/")
    if len(parts) == 2 and parts[1].endswith(JSON) and parts[1] != JSON:
        return {INDEXES: "index", LEASES: "lease"}.get(parts[0])  # type: ignore[return-value]
    parsed = parse_package_key(key)
    return parsed.kind if parsed is not None else None
