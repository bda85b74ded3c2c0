"""The registry catalog (index/_catalog.json): `list` takes each name's index from it only where its
copy is the current index (same etag); a catalog that is missing, damaged, stale or lying changes no
answer, the next `list` refreshes it, and `verify --repair` rewrites it."""

from __future__ import annotations

import json

import pytest

from memreg.registry import Registry
from memreg.registry import catalog
from memreg.registry import index as name_index
from memreg.registry.index import index_key
from memreg.schemas import NameIndex

EXPECTED = [("code@0.1.0", "code", False, []), ("law@1.1.0", "second", False, [])]


@pytest.fixture
def reg(law_and_code) -> Registry:  # tests/conftest.py
    return law_and_code


def _listed(reg: Registry, **kw) -> list[tuple[str, str, bool, list[str]]]:
    return [(s.manifest.ref, s.manifest.description, s.yanked, s.tags) for s in reg.list(**kw)]


def _copies(reg: Registry) -> dict[str, bytes]:
    return {n: c.encode() for n, c in json.loads(reg.store.read(catalog.KEY))["indexes"].items()}


def _current(reg: Registry) -> dict[str, bytes]:
    return {n: reg.store.read(index_key(n)) for n in ("code", "law")}


def _lying_copy(reg: Registry) -> bytes:
    """law's index with a phantom version and a false description: what a stale copy could say."""
    index = NameIndex.model_validate_json(reg.store.read(index_key("law")))
    entry = index.versions["1.1.0"]
    lying = entry.model_copy(update={"summary": entry.summary.model_copy(update={"description": "LIE"})})
    phantom = entry.model_copy(update={"summary": entry.summary.model_copy(update={"version": "9.9.9"})})
    return index.model_copy(update={"versions": {**index.versions, "1.1.0": lying, "9.9.9": phantom}}).model_dump_json().encode()


def _put_catalog(reg: Registry, copies: dict[str, bytes]) -> None:
    reg.store.put_bytes(catalog.KEY, json.dumps({"format": 1, "indexes": {n: c.decode() for n, c in copies.items()}}).encode())


def test_writers_keep_the_catalog_a_copy_of_every_index(reg):
    assert _copies(reg) == _current(reg)
    reg.tag("law@1.0.0", "stable")
    reg.yank("law@1.1.0")
    assert _copies(reg) == _current(reg)
    assert _listed(reg) == [("code@0.1.0", "code", False, []), ("law@1.0.0", "first", False, ["stable"])]


@pytest.mark.parametrize("damage", ["delete", "garbage", "not an object", "wrong format", "lying copy",
                                    "other name's copy", "copy of a name with no package", "not text"])
def test_a_missing_damaged_or_lying_catalog_changes_no_answer_and_is_refreshed(reg, damage):
    copies = _current(reg)
    if damage == "delete":
        reg.store.delete(catalog.KEY)
    elif damage in ("garbage", "not an object", "wrong format"):
        reg.store.put_bytes(catalog.KEY, {"garbage": b"{not json", "not an object": b"[1, 2]",
                                          "wrong format": json.dumps({"format": 99, "indexes": {}}).encode()}[damage])
    elif damage == "not text":
        reg.store.put_bytes(catalog.KEY, json.dumps({"format": 1, "indexes": {"law": 3, "code": None}}).encode())
    else:
        forged = {"lying copy": {**copies, "law": _lying_copy(reg)},
                  "other name's copy": {**copies, "law": copies["code"]},
                  "copy of a name with no package": {**copies, "ghost": copies["code"]}}[damage]
        _put_catalog(reg, forged)
    assert _listed(reg) == EXPECTED
    assert [s.manifest.ref for s in reg.list(all_versions=True)] == ["code@0.1.0", "law@1.0.0", "law@1.1.0"]
    assert _copies(reg) == copies  # the reader wrote back the copies it read


def test_a_copy_the_writer_could_not_update_is_bypassed(reg, monkeypatch):
    """A writer killed between its index update and its catalog update: the index wins."""
    with monkeypatch.context() as m:
        m.setattr(catalog, "note", lambda *a, **k: None)
        reg.yank("law@1.1.0")
        reg.tag("code@0.1.0", "stable")
    assert _copies(reg) != _current(reg)
    assert _listed(reg) == [("code@0.1.0", "code", False, ["stable"]), ("law@1.0.0", "first", False, [])]
    assert _copies(reg) == _current(reg)


def test_a_publisher_killed_before_any_index_update_leaves_a_version_the_next_reader_finds(reg, tiny_package, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(name_index, "published", lambda *a, **k: None)  # dies right after creating the manifest
        reg.publish(tiny_package, name="law", version="2.0.0", description="third")
        reg.publish(tiny_package, name="new", version="0.1.0", description="a new name")
    assert ("law@2.0.0", "third", False, []) in _listed(reg)
    assert ("new@0.1.0", "a new name", False, []) in _listed(reg)


def test_a_name_unknown_to_the_catalog_is_read_from_its_index(reg, tiny_package, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(catalog, "note", lambda *a, **k: None)
        reg.publish(tiny_package, name="new", version="0.1.0", description="a new name")
    assert "new" not in _copies(reg)
    assert ("new@0.1.0", "a new name", False, []) in _listed(reg)
    assert "new" in _copies(reg)


def test_repair_rewrites_the_catalog(reg):
    reg.store.put_bytes(catalog.KEY, b"{not json")
    assert reg.rebuild_index() == ["code", "law"]
    assert _copies(reg) == _current(reg)
    reg.store.delete(catalog.KEY)
    reg.rebuild_index()
    assert _copies(reg) == _current(reg)


def test_a_reader_that_cannot_write_still_answers(reg, monkeypatch):
    _put_catalog(reg, {**_current(reg), "law": _lying_copy(reg)})

    def refuse(*a, **k):
        raise PermissionError("read-only credentials")

    monkeypatch.setattr(reg.store, "swap", refuse)
    assert _listed(reg) == EXPECTED


def test_writers_start_a_damaged_catalog_afresh(reg, tiny_package):
    reg.store.put_bytes(catalog.KEY, b"{not json")
    reg.publish(tiny_package, name="new", version="0.1.0", description="a new name")
    assert set(_copies(reg)) == {"new"}  # what this writer knows; the rest is read from the indexes
    assert _listed(reg) == [*EXPECTED, ("new@0.1.0", "a new name", False, [])]
    assert set(_copies(reg)) == {"code", "law", "new"}


def test_a_deeply_nested_catalog_is_refused_with_a_warning_and_rewritten(reg, caplog):
    """Issue 23 item 4: a 200 kB catalog nested 100,000 deep made every `list` fail with
    RecursionError until `verify --repair`."""
    import logging

    copies = _current(reg)
    reg.store.put_bytes(catalog.KEY, b'{"format": 1, "indexes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with caplog.at_level(logging.WARNING, logger="memreg.registry"):
        assert _listed(reg) == EXPECTED
    assert f"{reg.url}/{catalog.KEY}" in caplog.text
    assert _copies(reg) == copies  # the reader wrote the catalog back
    reg.store.put_bytes(catalog.KEY, b"[" * 100_000 + b"]" * 100_000)
    reg.yank("law@1.1.0")  # a writer starts it afresh too
    assert set(_copies(reg)) == {"law"}
