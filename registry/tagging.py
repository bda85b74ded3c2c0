"""The mutable state of a package: tags (pointers moved by compare-and-swap) and yanks (records that
keep a version out of `name` and `name:latest` without deleting it).

Each change writes its record first and updates the package index after (see registry/index.py):
the records are the truth, the index a cache that a later read repairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from memreg.registry import index as name_index
from memreg.core.errors import ConcurrentUpdateError, InvalidReferenceError, ManifestError, YankedVersionError
from memreg.registry.layout import VIRTUAL_LATEST, tag_key, yank_key
from memreg.registry.reading import parse, warn
from memreg.registry.refs import Ref, check_name, check_version, parse_ref
from memreg.registry.store import Store
from memreg.schemas import Manifest, TagPointer, YankRecord

if TYPE_CHECKING:
    from memreg.registry.api import Registry


@dataclass(frozen=True)
class TagMove:
    name: str
    tag: str
    version: str
    previous: str | None


def move_tag(reg: Registry, ref: str | Ref, tag: str, *, retries: int, force: bool) -> TagMove:
    """Registry.tag: compare-and-swap until our write lands on the pointer we read."""
    check_name(tag, what="tag")
    refuse_latest(tag)
    m = reg.resolve(ref)
    if not force and m.version in reg.yanked(m.name):
        raise YankedVersionError(f"{m.ref} is yanked: tagging it {m.name}:{tag} would serve it again; "
                                 "unyank it first, or pass --force (force=True)")
    key = tag_key(m.name, tag)
    doc = TagPointer(name=m.name, tag=tag, version=m.version, updated_at=datetime.now(timezone.utc))
    body = doc.model_dump_json(indent=2).encode()
    for _ in range(retries):
        try:
            raw, etag = reg.store.read_with_etag(key)
            previous = parse(TagPointer, raw, key).version
        except FileNotFoundError:
            raw, etag, previous = None, None, None
        try:
            reg.store.swap(key, body, expected=etag)
        except ConcurrentUpdateError:
            continue
        if not force and m.version in reg.yanked(m.name):
            _move_back(reg.store, key, body, raw)
            name_index.sync_tag(reg.store, m.name, tag)
            raise YankedVersionError(f"{m.ref} was yanked while {m.name}:{tag} moved to it: the tag was moved "
                                     "back; unyank it first, or pass --force (force=True)")
        name_index.sync_tag(reg.store, m.name, tag)
        return TagMove(m.name, tag, m.version, previous)
    raise ConcurrentUpdateError(f"{m.name}:{tag} kept changing under {retries} attempts; try again")


def _move_back(store: Store, key: str, ours: bytes, previous: bytes | None) -> None:
    """Undo our own tag write, by compare-and-swap: a mover that came after us keeps its move."""
    try:
        raw, etag = store.read_with_etag(key)
    except FileNotFoundError:
        return
    if raw != ours:
        return
    try:
        if previous is None:
            store.delete(key)  # there was no tag before: the yanked version must not keep one
        else:
            store.swap(key, previous, expected=etag)
    except ConcurrentUpdateError:
        pass  # somebody moved it meanwhile: their move stands


def yank(reg: Registry, ref: str | Ref, reason: str) -> Manifest:
    m = reg.manifest(*_exact(ref, "yank"))
    rec = YankRecord(name=m.name, version=m.version, reason=reason, yanked_at=datetime.now(timezone.utc))
    try:
        reg.store.create(yank_key(m.name, m.version), rec.model_dump_json(indent=2).encode())
    except FileExistsError:
        pass  # yanking twice is a no-op
    name_index.set_yanked(reg.store, m.name, m.version, True)
    return m


def yank_record(reg: Registry, name: str, version: str) -> YankRecord | None:
    """Why and when name@version was yanked; None when it is not (or the record is unreadable, with a
    warning naming it: the version stays yanked, only the reason is lost)."""
    key = yank_key(check_name(name), check_version(version, name=name))
    where = f"{reg.url}/{key}"
    try:
        rec = parse(YankRecord, reg.store.read(key), where)
    except FileNotFoundError:
        return None
    except ManifestError as e:
        warn(f"{e}; its reason is not shown")
        return None
    if (rec.name, rec.version) != (name, version):
        warn(f"{where} is a yank record of {rec.name}@{rec.version}; its reason is not shown")
        return None
    return rec


def unyank(reg: Registry, ref: str | Ref) -> Manifest:
    m = reg.manifest(*_exact(ref, "unyank"))
    reg.store.delete(yank_key(m.name, m.version))  # idempotent: a missing record is fine
    name_index.set_yanked(reg.store, m.name, m.version, False)
    return m


def refuse_latest(tag: str) -> None:
    if tag == VIRTUAL_LATEST:
        raise InvalidReferenceError(
            "'latest' is not a tag you can move: name:latest always means the highest version that is not yanked"
        )


def _exact(ref: str | Ref, verb: str) -> tuple[str, str]:
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if not r.version:
        raise InvalidReferenceError(f"{verb} takes an exact version: name@VERSION, not {r}")
    return r.name, r.version
