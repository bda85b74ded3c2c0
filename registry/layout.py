"""Where each document of a registry lives (format v1), in one place for every module that reads or
writes one.

    memreg-registry.json                    marker
    blobs/sha256/<2 hex>/<64 hex>           immutable file bodies
    packages/<name>/<version>.json          immutable manifests, created exactly once
    packages/<name>/tags/<tag>.json         mutable pointers, moved by compare-and-swap
    packages/<name>/yanked/<version>.json   yank records

Leases (registry/gc.py) and package indexes (registry/index.py) are described where they are kept.
"""

from __future__ import annotations

from memreg.schemas import FileEntry

MARKER = "memreg-registry.json"
VIRTUAL_LATEST = "latest"  # `name:latest` is the highest non-yanked version, never a stored tag


def blob_key(entry: FileEntry) -> str:
    return f"blobs/sha256/{entry.hex[:2]}/{entry.hex}"


def manifest_key(name: str, version: str) -> str:
    return f"packages/{name}/{version}.json"


def tag_key(name: str, tag: str) -> str:
    return f"packages/{name}/tags/{tag}.json"


def yank_key(name: str, version: str) -> str:
    return f"packages/{name}/yanked/{version}.json"
