"""The registry catalog (`index/_catalog.json`): `list` in a bounded number of requests whatever the
number of package names.

The catalog holds, for every package name, a copy of the bytes of its index (`index/<name>.json`,
registry/index.py). It is never trusted over the index: `list` takes a listing of `index/` with each
document's etag (one LIST request per 1,000 names on S3) and uses a catalog copy only when its etag,
computed from the copy's bytes, equals the listed etag of the index, that is only when the copy *is*
the current index. Any other name (no copy, an older copy, a copy damaged in place) is read from its
index as before, and an unreadable or missing catalog means every name is. So `list` answers exactly
what the indexes say, whatever state the catalog is in, and the indexes keep their own rule: the
manifests stay the truth, an index that is missing, stale or damaged is rebuilt or bypassed.

Writers copy an index into the catalog after each write of the index, by compare-and-swap, best
effort: a copy lost to a race or a killed writer only costs a later `list` one read for that name,
and that `list` writes the copies it read back (`refresh`). `memreg verify --repair` rewrites the
whole catalog after rebuilding the indexes (`rewrite`).

Backends whose listing carries no etag (a local folder, memory://) compute the listed etags from the
documents themselves (Store.etags): the same rule, the same answers, without the saving.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from memreg.core.errors import ConcurrentUpdateError
from memreg.registry.layout import CATALOG_KEY as KEY
from memreg.registry.layout import INDEXES, index_key
from memreg.registry.reading import warn
from memreg.registry.store import Store
from memreg.schemas import Catalog

NOTE_ATTEMPTS = 16  # best effort: a copy that loses this many races is refreshed by the next `list`


# readers ---------------------------------------------------------------------------------------
def read_indexes(store: Store, list_names: Callable[[], list[str]],
                 ) -> tuple[list[str], dict[str, bytes | None], bool]:
    """The package names (`list_names()`), and the bytes of each one's index (None where it has none),
    taken from the catalog where its copy is the current index and read from the index otherwise; and
    whether the catalog needs a refresh. The names, the listing of etags and the catalog are fetched
    together: one round trip of latency for the three."""
    names, listed, (raw, _) = store.together(list_names, lambda: store.etags(INDEXES), lambda: _read(store))
    copies = _parse(raw)
    if copies is None:
        warn(f"{store.url}/{KEY} is not a catalog this memreg reads; every index is read instead, and the catalog "
             "is rewritten")
        copies = {}
    out: dict[str, bytes | None] = {}
    for name in names:
        key, copy = index_key(name), copies.get(name)
        if key in listed and copy is not None and store.etag_of(copy) == listed[key]:
            out[key] = copy
    need = [index_key(n) for n in names if index_key(n) not in out and index_key(n) in listed]
    out |= store.read_many(need)
    out |= {index_key(n): None for n in names if index_key(n) not in out}  # no index: rebuilt by the caller
    stale = bool(need) or set(copies) - set(names)
    return names, out, bool(stale)


def refresh(store: Store, current: dict[str, bytes]) -> None:
    """A reader's repair: the copies `current` (name -> index bytes just read or written) replace
    the catalog's, names not in `current` are dropped. One attempt; never an error."""
    try:
        raw, etag = _read(store)
        store.swap(KEY, _dump(current), expected=etag if raw is not None else None)
    except Exception:  # noqa: BLE001 - read-only credentials, a lost race, a flaky store: the answer stands
        pass


# writers ---------------------------------------------------------------------------------------
def note(store: Store, name: str, data: bytes) -> None:
    """After `data` was written as name's index: copy it into the catalog (best effort)."""
    try:
        _change(store, {name: data})
    except Exception:  # noqa: BLE001 - the index is written; the next `list` reads it and refreshes
        pass


def rewrite(store: Store, names: list[str]) -> None:
    """`memreg verify --repair`: the catalog, from the indexes as they are now."""
    raw = store.read_many([index_key(n) for n in names])
    current = {n: data for n in names if (data := raw[index_key(n)]) is not None}
    for attempt in range(NOTE_ATTEMPTS):
        try:
            old, etag = _read(store)
            store.swap(KEY, _dump(current), expected=etag if old is not None else None)
            return
        except ConcurrentUpdateError:
            time.sleep(random.uniform(0, 0.01 * min(attempt + 1, 10)))
    raise ConcurrentUpdateError(f"{store.url}/{KEY} kept changing under {NOTE_ATTEMPTS} attempts; try again")


# the pieces ------------------------------------------------------------------------------------
def _read(store: Store) -> tuple[bytes | None, str | None]:
    try:
        return store.read_with_etag(KEY)
    except FileNotFoundError:
        return None, None


def _parse(raw: bytes | None) -> dict[str, bytes] | None:
    """name -> index bytes held by the catalog; {} when it is missing, None when it is damaged (either
    way every name is then read from its index)."""
    if raw is None:
        return {}
    try:  # either spelling of the format version (schemas/v1.py); written as format_version
        return {n: c.encode() for n, c in Catalog.model_validate_json(raw).indexes.items()}
    # RecursionError: a parser nesting one call per level would exhaust the stack on a small
    # document nested 100,000 deep; it is damage like any other, not the end of every `list`
    except (ValueError, UnicodeError, RecursionError):
        return None


def _dump(copies: dict[str, bytes]) -> bytes:
    return Catalog(indexes={n: copies[n].decode() for n in sorted(copies)}).model_dump_json().encode()


def _change(store: Store, update: dict[str, bytes]) -> None:
    """Set these copies by compare-and-swap, keeping the others; a damaged catalog starts afresh."""
    for attempt in range(NOTE_ATTEMPTS):
        raw, etag = _read(store)
        copies = _parse(raw) or {}
        if all(copies.get(n) == d for n, d in update.items()):
            return
        try:
            store.swap(KEY, _dump(copies | update), expected=etag if raw is not None else None)
            return
        except ConcurrentUpdateError:
            time.sleep(random.uniform(0, 0.01 * min(attempt + 1, 10)))
    raise ConcurrentUpdateError(f"{store.url}/{KEY} kept changing under {NOTE_ATTEMPTS} attempts")
