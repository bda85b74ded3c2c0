"""Garbage collection: blobs no manifest references and leftovers of interrupted uploads.

A publisher uploads blobs before its manifest exists, so gc only removes what is older than a grace
period, and never what a publish in flight has leased (its lease, written before the publisher
re-checks its blobs and kept LEASE_TTL) or an upload temp file younger than UPLOAD_FLOOR.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from memreg.core.errors import InvalidArgumentError
from memreg.registry.layout import BLOBS, LEASES, PACKAGES, blob_key_of, parse_package_key
from memreg.registry.reading import warn
from memreg.registry.store import Store
from memreg.schemas import FORMAT_VERSION, Lease, UnsupportedFormatError

LEASE_TTL = timedelta(hours=1)  # longer than a publish's check -> manifest -> re-check, and than a gc run
UPLOAD_FLOOR = timedelta(hours=1)  # an upload temp file this young may belong to a live publisher
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class GcReport:
    removed_blobs: list[str]
    removed_bytes: int
    kept_recent: int
    removed_uploads: list[str]


def check_grace(grace: timedelta) -> timedelta:
    seconds = grace.total_seconds() if isinstance(grace, timedelta) else float("nan")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgumentError(f"grace {grace!r} must be a finite, non-negative duration, e.g. 24 hours")
    return grace


def collect_garbage(store: Store, *, grace: timedelta, dry_run: bool) -> GcReport:
    """Delete blobs that no manifest references and leftovers of interrupted uploads, older
    than `grace` (a publisher may be uploading blobs whose manifest does not exist yet).

    Never removed, whatever the grace: a blob any manifest mentions (read as raw text, so a
    malformed manifest still protects its blobs), a blob named by a lease younger than
    LEASE_TTL (a publish in flight relies on it; the leases are re-read right before each
    delete), an upload temp file or multipart upload younger than UPLOAD_FLOOR."""
    grace = check_grace(grace)
    referenced = _mentioned_blobs(store)
    cutoff = _now() - grace
    removed, removed_bytes, kept = [], 0, 0
    for key in store.list(BLOBS):
        if key in referenced:
            continue
        try:
            young, size = store.modified(key) > cutoff, store.size(key)
        except FileNotFoundError:
            continue  # another gc got there first
        if young or key in _leased_blobs(store, expire=not dry_run):
            kept += 1
            continue
        removed_bytes += size
        removed.append(key)
        if not dry_run:
            store.delete(key)
    if not dry_run:
        _leased_blobs(store, expire=True)  # expired leases go even when no blob was a candidate
    upload_cutoff = _now() - max(grace, UPLOAD_FLOOR)
    uploads = [k for k, t in store.stale_uploads() if t <= upload_cutoff]
    if not dry_run:
        for k in uploads:
            try:
                store.remove_stale_upload(k)
            except FileNotFoundError:
                pass  # finished or removed meanwhile
    return GcReport(removed, removed_bytes, kept, uploads)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _mentioned_blobs(store: Store) -> set[str]:
    """Blobs named by any document under packages/ but the tag pointers and yank records (which
    name none), recognised by their place in the layout: a package may be called `tags`."""
    out = set()
    for key in store.list(PACKAGES):
        parsed = parse_package_key(key)
        if not key.endswith(".json") or (parsed is not None and parsed.kind != "manifest"):
            continue
        try:
            raw = store.read(key)
        except FileNotFoundError:
            continue
        out |= {blob_key_of(h) for h in _DIGEST.findall(raw.decode(errors="replace"))}
    return out


def _leased_blobs(store: Store, *, expire: bool) -> set[str]:
    out, cutoff = set(), _now() - LEASE_TTL
    for key in store.list(LEASES):
        try:
            if store.modified(key) <= cutoff:
                if expire:
                    store.delete(key)
                continue
            out |= set(_lease(store, key).blobs)
        except FileNotFoundError:
            continue
        except UnsupportedFormatError:
            raise
        except (ValueError, RecursionError):
            warn(f"{store.url}/{key} is not a valid lease; ignored")
    return out


def _lease(store: Store, key: str) -> Lease:
    """The lease at `key`. One of a newer format stops gc (UnsupportedFormatError): this memreg
    cannot tell which blobs it protects, and a blob it protects must never be deleted."""
    raw = store.read(key)
    version = json.loads(raw).get("format_version", FORMAT_VERSION) if raw.lstrip().startswith(b"{") else None
    if version not in (None, FORMAT_VERSION):
        raise UnsupportedFormatError(f"{store.url}/{key} is a lease of format {version!r}, which this memreg cannot "
                                     f"read (it reads format {FORMAT_VERSION}); upgrade memreg to run gc")
    return Lease.model_validate_json(raw)
