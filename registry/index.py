"""Package indexes (`index/<name>.json`): `list` in a bounded number of requests.

Without them `list --all` reads every manifest, and even listing the keys of 10,000 versions is ten
sequential LIST pages. With them `list` is one delimiter listing (the package names) and one
concurrent batch of reads (one index per package), whatever the number of versions; and the
registry catalog (registry/catalog.py), a copy of every index checked against a listing of their
etags, spares those reads wherever its copy is the current index.

The manifests, yank records and tag pointers stay the truth; an index is a cache that writers keep
current by compare-and-swap, and readers rebuild (from a listing of the package) when it is missing
or unreadable:

* publish announces its version in the index (pending) *before* it creates the manifest, and marks
  it published after. A publisher killed in between leaves a pending entry: readers read that one
  manifest, and list the version if it exists. So every manifest a publisher of this format writes
  is known to the index, and `list` need not list manifests.
* yank, unyank and tag update the index after the record they change. One killed in between leaves
  `list` showing the old flag until the next operation on that package, a `show` of it (which reads
  the truth and writes the repair) or `memreg verify --repair`. `show`, `pull` and tag resolution
  always read the truth, never the index.
* Manifests written by other means (an older memreg, a bucket copy) are invisible to `list` until a
  `show NAME` or `verify --repair`: said in the README.
* `list` without --all validates only the entry it prints for each package (pydantic building every
  summary cost 0.13 s at 10,000 versions); damage elsewhere in an index is met, and repaired, by
  `list --all`, `show NAME` or `verify --repair`. An index `list` cannot use (a version key that is no
  version, a summary without its fingerprint, …) is rebuilt with a warning naming it, never fatal.
* A repair (`show`'s, `verify --repair`'s) rebuilds the index from a listing taken *after* it read the
  index, and writes by compare-and-swap against that read (_rewrite): a yank, tag or publish that
  lands while it reads the manifests either is in its listing or changed the index, which fails the
  swap and starts the rebuild again.
* Summaries are checked against their manifests by `verify --repair` (every manifest: seconds for a
  large package) and, for the version it shows, by `show` (it reads that manifest anyway:
  correct_summary). `show` does not read every manifest of a package: at 10,000 versions on S3 that
  is minutes, against its sub-second budget; a forged summary of another version is met by
  `verify --repair`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from memreg.registry import catalog
from memreg.core.errors import ConcurrentUpdateError, InvalidReferenceError, ManifestError
from memreg.registry.layout import PACKAGES, index_key, manifest_key, package_prefix, parse_package_key, tag_key
from memreg.registry.reading import checked_manifest, parse, valid, warn
from memreg.registry.refs import check_name, check_version, version_key
from memreg.registry.store import Store
from memreg.schemas import IndexedVersion, Manifest, NameIndex, TagPointer, TokenizerFingerprint, VersionSummary

# one listing of packages/<name>/: {version: manifest key}, yanked versions, tag names
Listing = tuple[dict[str, str], set[str], list[str]]
WRITE_ATTEMPTS = 64
PENDING_TTL = timedelta(hours=1)  # a pending entry older than this with no manifest is a dead publisher's


@dataclass
class PackageState:
    """One package: summaries of its valid versions, its yanks and its tags."""

    name: str
    summaries: dict[str, VersionSummary] = field(default_factory=dict)
    fingerprints: dict[str, TokenizerFingerprint] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)  # every version with a manifest, valid or not, lowest first
    yanked: set[str] = field(default_factory=set)
    tags: dict[str, str] = field(default_factory=dict)

    def versions(self, *, include_yanked: bool = True) -> list[str]:
        """Versions with a valid manifest, lowest first."""
        return [v for v in sorted(self.summaries, key=version_key) if include_yanked or v not in self.yanked]


# readers ---------------------------------------------------------------------------------------
def read_all(store: Store, *, latest_only: bool = False) -> dict[str, PackageState]:
    """Every package, from its index (`list`): one listing of names, the indexes (from the catalog
    where its copy is the current index, registry/catalog.py; one batch of reads for the others), one
    batch for pending versions; a missing or unreadable index is rebuilt from its package.
    `latest_only`: each state holds only the highest version that is not yanked (`list` without
    --all), and only that version's entry is validated (see _latest_state)."""
    def list_names() -> list[str]:
        return [n for n in store.children(PACKAGES)
                if valid(check_name, n, f"{store.url}/{package_prefix(n)}/", "not a valid package name")]

    names, raw, stale = catalog.read_indexes(store, list_names)
    quick = {n: _latest_state(n, raw[index_key(n)]) for n in names} if latest_only else {}
    indexes = {n: _parse_index(store, n, raw[index_key(n)]) for n in names if quick.get(n) is None}
    pending = [manifest_key(n, v) for n, ix in indexes.items() if ix is not None
               for v, e in ix.versions.items() if e.summary is None]
    docs = store.read_many(pending)
    out, current = {}, {}  # current: name -> the bytes its index now holds, for the catalog
    for name in sorted(names):
        if (state := quick.get(name)) is not None:
            out[name], current[name] = state, raw[index_key(name)]
            continue
        index = indexes[name]
        if index is None:
            out[name] = read_one(store, name)  # rebuilt from the truth and written back
            stale = True
            continue
        fresh = _settle_pending(store, name, index, docs)
        out[name] = _state(fresh)
        current[name] = raw[index_key(name)]
        if fresh != index:
            written = _write_back(store, name, raw[index_key(name)], fresh)
            current[name], stale = (written, True) if written else (current[name], stale)
    if stale:
        catalog.refresh(store, current)
    return out


def fetch_one(store: Store, name: str) -> tuple[bytes | None, Listing]:
    """The bytes of name's index (None if it has none) and one listing of the package, fetched at
    once: one round trip of latency, not two."""
    key = index_key(check_name(name))
    raw, listing = store.together(lambda: store.read_many([key])[key], lambda: list_package(store, name))
    return raw, listing


def read_one(store: Store, name: str, fetched: tuple[bytes | None, Listing] | None = None) -> PackageState:
    """One package from the truth (its listing, its tags; manifests the index cannot summarise),
    with the summaries the index already has; the index is repaired where it differed. `fetched`:
    what fetch_one returned, when the caller needed the listing too."""
    raw, listing = fetched or fetch_one(store, name)
    old = _parse_index(store, name, raw) if raw is not None else None
    fresh, state = _from_truth(store, name, old or NameIndex(name=name), listing)
    exists = old is not None or any(listing)  # no index for a name nobody published (`show typo`)
    if exists and fresh != old:
        # `fetched` read the index and listed the package at once, so the index may be newer than
        # the listing: the repair lists again after reading the index it replaces
        _repair(store, name, fresh)
    return state


# writers ---------------------------------------------------------------------------------------
def announce(store: Store, name: str, version: str) -> None:
    """Before publish creates a manifest: the index names the version as pending, so a reader that
    trusts the index still finds the manifest if the publisher dies right after creating it."""

    def change(index: NameIndex) -> NameIndex | None:
        if version in index.versions:
            return None  # published already (same content: publish checked) or announced by a racer
        entry = IndexedVersion(pending_since=datetime.now(timezone.utc))
        return index.model_copy(update={"versions": {**index.versions, version: entry}})

    # not copied into the catalog: its copy of this index is stale until `published` copies the
    # settled index, so until then `list` reads the index itself (registry/catalog.py)
    _update(store, name, change, note=False)


def published(store: Store, manifest: Manifest) -> None:
    """After the manifest exists. Best effort: a failure leaves the entry pending, which readers settle."""
    _best_effort(store, manifest.name, _summary_of(manifest))


def correct_summary(store: Store, manifest: Manifest, state: PackageState) -> None:
    """`show`: the summary of the version it shows, checked against that version's manifest (read
    anyway); one that differs is replaced, in `state` and in the index (one attempt, never an error:
    read-only credentials or a lost race leave the answer standing)."""
    summary = VersionSummary.of(manifest)
    if manifest.version not in state.summaries or state.summaries[manifest.version] == summary:
        return
    warn(f"{store.url}/{index_key(manifest.name)} held a summary of {manifest.ref} that differs from its manifest; corrected")
    state.summaries[manifest.version] = summary
    state.fingerprints[manifest.tokenizer.digest] = manifest.tokenizer
    try:
        _update(store, manifest.name, _summary_of(manifest), attempts=1)
    except Exception:  # noqa: BLE001
        pass


def _summary_of(manifest: Manifest) -> Callable[[NameIndex], NameIndex | None]:
    """The index change that files `manifest`'s summary under its version."""

    def change(index: NameIndex) -> NameIndex | None:
        entry = IndexedVersion(summary=VersionSummary.of(manifest))
        if index.versions.get(manifest.version) == entry:
            return None
        fps = {**index.fingerprints, manifest.tokenizer.digest: manifest.tokenizer}
        return index.model_copy(update={"versions": {**index.versions, manifest.version: entry}, "fingerprints": fps})

    return change


def set_yanked(store: Store, name: str, version: str, yanked: bool) -> None:
    def change(index: NameIndex) -> NameIndex | None:
        now = set(index.yanked) | {version} if yanked else set(index.yanked) - {version}
        return None if now == set(index.yanked) else index.model_copy(update={"yanked": sorted(now, key=version_key)})

    _best_effort(store, name, change)


def sync_tag(store: Store, name: str, tag: str) -> None:
    """Copy one tag pointer (the truth, read now) into the index, or drop the tag if it is gone."""
    try:
        target = parse(TagPointer, store.read(tag_key(name, tag)), tag).version
    except (FileNotFoundError, ManifestError):
        target = None

    def change(index: NameIndex) -> NameIndex | None:
        if index.tags.get(tag) == target:
            return None
        tags = {t: v for t, v in index.tags.items() if t != tag} | ({tag: target} if target else {})
        return index.model_copy(update={"tags": tags})

    _best_effort(store, name, change)


def rebuild(store: Store) -> list[str]:
    """Rewrite every package's index from the truth, then the catalog from the indexes (`memreg
    verify --repair`); the names whose index was rewritten."""
    done, names = [], []
    for name in sorted(store.children(PACKAGES)):
        try:
            check_name(name)
        except Exception:  # noqa: BLE001 - a stray folder: read_all warns about it
            continue
        names.append(name)
        verified, _ = _from_truth(store, name, NameIndex(name=name))  # every manifest: seconds for a large package
        if _rewrite(store, name, verified, force=True, note=False):
            done.append(name)
    catalog.rewrite(store, names)
    return done


def list_package(store: Store, name: str) -> Listing:
    """One listing of packages/<name>/: {version: manifest key}, yanked versions, tag names.
    Entries that are none of these are skipped with a warning naming them."""
    manifests, yanked, tags = {}, set(), []
    for key in store.list(package_prefix(check_name(name))):
        doc, where = parse_package_key(key), f"{store.url}/{key}"
        if doc is None:
            if key.count("/") == 2:
                warn(f"{where}: not <version>.json; ignored")
        elif doc.kind == "manifest" and valid(check_version, doc.stem, where, "not <version>.json"):
            manifests[doc.stem] = key
        elif doc.kind == "yank" and doc.stem and valid(check_version, doc.stem, where, "not <version>.json"):
            yanked.add(doc.stem)
        elif doc.kind == "tag" and doc.stem:
            tags.append(doc.stem)
    return manifests, yanked, tags


# the pieces ------------------------------------------------------------------------------------
class _IndexHead(NameIndex):
    """A NameIndex whose version entries and fingerprints are left as plain JSON (see _latest_state)."""

    versions: dict[str, dict[str, Any]] = {}  # type: ignore[assignment]
    fingerprints: dict[str, dict[str, Any]] = {}  # type: ignore[assignment]


def _latest_state(name: str, raw: bytes | None) -> PackageState | None:
    """The package as `list` prints it, validating only the entry it prints: pydantic builds a model
    per version summary, 0.13 s for the 10,000 of a large registry, while `list` prints one per name.
    None (then the whole index is parsed, settled and, if damaged, rebuilt as usual) when the index
    is missing, names another package, has a pending entry, or anything on the way does not check.
    So a damaged entry below the printed one is met by `list --all`, `show` or `verify --repair`."""
    if raw is None:
        return None
    try:
        head = _IndexHead.model_validate_json(raw)
        if head.name != name or any(e.get("summary") is None for e in head.versions.values()):
            return None
        for v in sorted(head.versions, key=version_key, reverse=True):
            if v in head.yanked:
                continue
            summary = IndexedVersion.model_validate(head.versions[v]).summary
            fp = TokenizerFingerprint.model_validate(head.fingerprints[summary.tokenizer])
            if (summary.name, summary.version, fp.digest) != (name, v, summary.tokenizer):
                return None  # an entry that contradicts its key: _parse_index names the damage
            return PackageState(name=name, summaries={v: summary}, fingerprints={fp.digest: fp}, listed=[v],
                                yanked=set(head.yanked), tags=dict(head.tags))
        return PackageState(name=name, yanked=set(head.yanked), tags=dict(head.tags))  # every version yanked
    except (ValueError, KeyError, TypeError):  # pydantic and version_key raise ValueErrors
        return None


def _parse_index(store: Store, name: str, raw: bytes | None) -> NameIndex | None:
    """The index, or None when it is missing or unreadable (then it is rebuilt)."""
    if raw is None:
        return None
    try:
        index = parse(NameIndex, raw, f"{store.url}/{index_key(name)}")
    except ManifestError as e:
        warn(f"{e}; rebuilt from the manifests")
        return None
    if problem := _index_problem(name, index):
        warn(f"{store.url}/{index_key(name)} {problem}; rebuilt from the manifests")
        return None
    return index


def _index_problem(name: str, index: NameIndex) -> str | None:
    """What the schema lets through and `list` cannot use: a key that is no version (sorting the
    versions failed, for every package), an entry whose summary names another version, a summary
    whose fingerprint is missing (`--compatible-with` raised KeyError)."""
    if index.name != name:
        return f"indexes {index.name!r}"
    for v in [*index.versions, *index.yanked, *index.tags.values()]:
        try:
            check_version(v)
        except InvalidReferenceError:
            return f"names version {v!r}, which is not a semantic version"
    for v, e in index.versions.items():
        if e.summary is not None and (e.summary.name, e.summary.version) != (name, v):
            return f"holds a summary of {e.summary.ref} under {name}@{v}"
        if e.summary is not None and e.summary.tokenizer not in index.fingerprints:
            return f"lacks the tokenizer fingerprint {e.summary.tokenizer} of {name}@{v}"
    if bad := [d for d, fp in index.fingerprints.items() if fp.digest != d]:
        return f"files a fingerprint under {bad[0]}, not under its digest"
    return None


def _summarise(store: Store, name: str, version: str, raw: bytes | None) -> Manifest | None:
    if raw is None:
        return None
    try:
        return checked_manifest(raw, name, version, f"{store.url}/{manifest_key(name, version)}")
    except ManifestError as e:
        warn(str(e))
        return None


def _settle_pending(store: Store, name: str, index: NameIndex, docs: dict[str, bytes | None]) -> NameIndex:
    """Pending entries whose manifest now exists become published; the rest stay pending."""
    versions, fps = dict(index.versions), dict(index.fingerprints)
    for v, e in index.versions.items():
        if e.summary is None and (m := _summarise(store, name, v, docs.get(manifest_key(name, v)))):
            versions[v] = IndexedVersion(summary=VersionSummary.of(m))
            fps[m.tokenizer.digest] = m.tokenizer
    return index.model_copy(update={"versions": versions, "fingerprints": fps})


def _from_truth(store: Store, name: str, index: NameIndex, listing: Listing | None = None) -> tuple[NameIndex, PackageState]:
    """Rebuild from one listing of the package (`listing`, or taken now); manifests are read only
    where `index` has no summary, whose summaries are kept as they are (`verify --repair` passes an
    index without any, so it reads every manifest); its pending entries are kept while young."""
    manifests, yanked, tags = listing or list_package(store, name)
    need = [k for v, k in manifests.items() if (e := index.versions.get(v)) is None or e.summary is None
            or e.summary.tokenizer not in index.fingerprints]
    docs = store.read_many(need + [tag_key(name, t) for t in tags])
    versions: dict[str, IndexedVersion] = {}
    fps: dict[str, TokenizerFingerprint] = {}
    for v, key in manifests.items():
        if key not in docs:
            versions[v] = index.versions[v]
            fps[versions[v].summary.tokenizer] = index.fingerprints[versions[v].summary.tokenizer]
        elif m := _summarise(store, name, v, docs[key]):
            versions[v] = IndexedVersion(summary=VersionSummary.of(m))
            fps[m.tokenizer.digest] = m.tokenizer
    # announced, no manifest yet: a publisher may be between the two; a dead one's entry expires
    cutoff = datetime.now(timezone.utc) - PENDING_TTL
    versions |= {v: e for v, e in index.versions.items()
                 if v not in manifests and e.summary is None and e.pending_since and e.pending_since > cutoff}
    fresh = NameIndex(name=name, versions=versions, yanked=sorted(yanked, key=version_key),
                      tags=read_tags(store, name, tags, docs), fingerprints=fps)
    state = _state(fresh)
    state.listed = sorted(manifests, key=version_key)
    return fresh, state


def read_tags(store: Store, name: str, tags: list[str], docs: dict[str, bytes | None]) -> dict[str, str]:
    """Tag -> version from the pointers read into `docs`; one whose content names another package
    or tag than its path is skipped with a warning, as is one that is not a valid pointer."""
    out = {}
    for tag in tags:
        key = tag_key(name, tag)
        if docs.get(key) is None:
            continue
        try:
            ptr = parse(TagPointer, docs[key], f"{store.url}/{key}")
        except ManifestError as e:
            warn(f"{e}; ignored")
            continue
        if ptr.name != name or ptr.tag != tag:
            warn(f"{store.url}/{key} points {ptr.name}:{ptr.tag}, not the tag its path names; ignored")
            continue
        out[tag] = ptr.version
    return out


def _state(index: NameIndex) -> PackageState:
    summaries = {v: e.summary for v, e in index.versions.items() if e.summary is not None}
    return PackageState(name=index.name, summaries=summaries, fingerprints=dict(index.fingerprints),
                        listed=sorted(summaries, key=version_key), yanked=set(index.yanked), tags=dict(index.tags))


def _pending(index: NameIndex) -> NameIndex:
    """The index without its summaries: what a rebuild keeps of it (announcements of publishers that
    may be between their announcement and their manifest)."""
    return NameIndex(name=index.name, versions={v: e for v, e in index.versions.items() if e.summary is None})


def _rewrite(store: Store, name: str, verified: NameIndex, *, force: bool = False, note: bool = True,
             attempts: int = WRITE_ATTEMPTS) -> bool:
    """Write the index rebuilt from the truth, with the summaries of `verified` (not read again:
    `verify --repair`'s come from every manifest, a reader's repair keeps those the index held, and
    `show` checks the one it shows: correct_summary). The package is listed again *after*
    the index is read, and the write is a compare-and-swap against that read: a yank, tag or publish
    that landed since `verified` was built (reading every manifest takes seconds) is in the new
    listing or changed the index, and then the swap fails and the rebuild starts over. `force`:
    write even if the index already says the same (`verify --repair` rewrites every index)."""
    summarised = {v: e for v, e in verified.versions.items() if e.summary is not None}

    def change(current: NameIndex) -> NameIndex | None:
        known = NameIndex(name=name, versions={**_pending(current).versions, **summarised},
                          fingerprints=verified.fingerprints)
        fresh = _from_truth(store, name, known)[0]
        return fresh if force or fresh != current else None

    return _update(store, name, change, rebuild_missing=False, note=note, attempts=attempts)


def _repair(store: Store, name: str, verified: NameIndex) -> None:
    """A reader's repair: one attempt (a lost race means somebody else is writing the index), never
    an error (read-only credentials, a flaky store: the answer stands)."""
    try:
        _rewrite(store, name, verified, attempts=1)
    except Exception:  # noqa: BLE001
        pass


def _update(store: Store, name: str, change: Callable[[NameIndex], NameIndex | None], *,
            rebuild_missing: bool = True, note: bool = True, attempts: int = WRITE_ATTEMPTS) -> bool:
    """Apply `change` to the index by compare-and-swap, retrying lost races. A missing or unreadable
    index is first rebuilt from the truth, so a writer never replaces it with one that knows only its
    own change; what was written is then copied into the catalog (`note`, best effort). Returns
    whether something was written; ConcurrentUpdateError after `attempts`."""
    for attempt in range(attempts):
        try:
            raw, etag = store.read_with_etag(index_key(name))
        except FileNotFoundError:
            raw, etag = None, None
        current = _parse_index(store, name, raw) if raw is not None else None
        if current is None:
            current = _from_truth(store, name, NameIndex(name=name))[0] if rebuild_missing else NameIndex(name=name)
        new = change(current)
        if new is None:
            return False
        data = new.model_dump_json().encode()
        try:
            store.swap(index_key(name), data, expected=etag)
        except ConcurrentUpdateError:
            time.sleep(random.uniform(0, 0.01 * min(attempt + 1, 10)))  # spread the racers out
            continue
        if note:
            catalog.note(store, name, data)
        return True
    raise ConcurrentUpdateError(f"{store.url}/{index_key(name)} kept changing under {attempts} attempts; try again")


def _best_effort(store: Store, name: str, change: Callable[[NameIndex], NameIndex | None]) -> None:
    try:
        _update(store, name, change)
    except Exception as e:  # noqa: BLE001 - the truth is written; the index heals on the next `show`
        warn(f"could not update {store.url}/{index_key(name)} ({e}); `memreg verify --repair` rebuilds it")


def _write_back(store: Store, name: str, old: bytes | None, fresh: NameIndex) -> bytes | None:
    """A reader's repair: only if nobody changed the index since it was read; never an error. The
    bytes written, or None."""
    data = fresh.model_dump_json().encode()
    try:
        store.swap(index_key(name), data, expected=None if old is None else store.etag_of(old))
    except Exception:  # noqa: BLE001 - read-only credentials, a lost race, a flaky store: the answer stands
        return None
    return data

