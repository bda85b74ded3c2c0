"""Where a registry's bytes live: an abstract Store (base.py) and one backend a module.

    base.py     Store: the primitives the registry uses (read, create, swap, put, list, delete, …)
    generic.py  any fsspec filesystem (create/swap not atomic across processes)
    local.py    a folder: link(2) for create, flock(2) for swap
    memory.py   memory://: a process lock for create and swap
    s3.py       s3://: conditional writes (If-None-Match / If-Match), botocore for documents, s3fs for blobs

`open_store(url)` picks the backend from the URL. The registry never calls fsspec, s3fs or botocore
itself: it asks a Store.
"""

from __future__ import annotations

from typing import Any

from memreg.registry.store.base import Store
from memreg.registry.store.generic import GenericStore
from memreg.registry.store.local import LocalStore
from memreg.registry.store.memory import MemoryStore
from memreg.registry.store.s3 import S3Store, open_s3

__all__ = ["GenericStore", "LocalStore", "MemoryStore", "S3Store", "Store", "open_store"]


def open_store(url: str, storage_options: dict[str, Any] | None = None) -> Store:
    """A Store for any fsspec URL: a plain path, file://, memory://, s3://, gs://, …"""
    if url.startswith(("s3://", "s3a://")):  # not through fsspec: url_to_fs would import s3fs, which only blobs need
        return open_s3(url, storage_options or {})
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return LocalStore(fs, root, url)
    if protocol == "memory":
        return MemoryStore(fs, root, url)
    return GenericStore(fs, root, url)
