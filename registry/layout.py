"""Where each document of a registry lives (format v1), in one place for every module that reads or
writes one.

    memreg-registry.json                    marker
    blobs/sha256/<2 hex>/<64 hex>           immutable file bodies
    packages/<name>/<version>.json          immutable manifests, created exactly once
    packages/<name>/tags/<tag>.json         mutable pointers, moved by compare-and-swap
    packages/<name>/yanked/<version>.json   yank records
    packages/<name>/signatures/<version>/<64 hex>.json
                                            signatures (registry/signing.py), each named after the
                                            sha256 of its own bytes and created once

Leases (registry/gc.py) and package indexes (registry/index.py) are described where they are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from memreg.schemas import FileEntry

MARKER = "memreg-registry.json"
VIRTUAL_LATEST = "latest"  # `name:latest` is the highest non-yanked version, never a stored tag
PACKAGES, TAGS, YANKED, SIGNATURES = "packages", "tags", "yanked", "signatures"


def blob_key(entry: FileEntry) -> str:
    return f"blobs/sha256/{entry.hex[:2]}/{entry.hex}"


def manifest_key(name: str, version: str) -> str:
    return f"packages/{name}/{version}.json"


def tag_key(name: str, tag: str) -> str:
    return f"{PACKAGES}/{name}/{TAGS}/{tag}.json"


def yank_key(name: str, version: str) -> str:
    return f"{PACKAGES}/{name}/{YANKED}/{version}.json"


def signatures_prefix(name: str, version: str) -> str:
    return f"{PACKAGES}/{name}/{SIGNATURES}/{version}"


def signature_key(name: str, version: str, hexdigest: str) -> str:
    return f"{signatures_prefix(name, version)}/{hexdigest}.json"


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
    if parts[0] != PACKAGES or not parts[-1].endswith(".json") or not all(parts):
        return None
    stem = parts[-1][: -len(".json")]
    if len(parts) == 3:
        return PackageKey("manifest", parts[1], stem)
    if len(parts) == 4 and parts[2] in (TAGS, YANKED):
        return PackageKey("tag" if parts[2] == TAGS else "yank", parts[1], stem)
    if len(parts) == 5 and parts[2] == SIGNATURES:  # deeper than any other document: no name clash
        return PackageKey("signature", parts[1], parts[3])
    return None
