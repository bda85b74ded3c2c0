"""Every golden document of every kind keeps loading (the PEFT rule: what an older memreg wrote, a
newer one reads). The goldens are sets under tests/golden/, each what memreg wrote at the time and
never edited (tests/golden/README.md); a key's kind, and so its schema, comes from registry/layout.py.

Each golden must validate with today's model of its kind and keep its content when memreg writes it
again (fields added to format 1 since, with their defaults, are the only difference allowed); every
kind of document must have at least one golden, so a new kind cannot land without one; and every
kind carries a format version.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from memreg.registry import catalog, layout
from memreg.registry.api import Registry
from memreg.schemas import Lease, PackageCard, UnsupportedFormatError

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
# field a golden may lack because format 1 gained it after the golden was written -> its default
ADDED_SINCE: dict[str, dict[str, object]] = {"lease": {"format_version": 1}, "catalog": {"format_version": 1}}
UTC_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00")
RENAMED_SINCE: dict[str, dict[str, str]] = {"catalog": {"format": "format_version"}}  # old spelling -> new


def goldens() -> list[tuple[str, str]]:
    """(path under tests/golden/, kind) of every golden document: registry documents by their key
    inside a set's registry/ folder, package cards as package/memreg.json. A saved composition
    (composition-* sets) is a transformers config.json, not a registry document: its own test is
    tests/regression/test_golden_composition.py."""
    out = []
    for path in sorted(GOLDEN.rglob("*.json")):
        rel = path.relative_to(GOLDEN)
        if rel.parts[0].startswith(("composition-", "router-")):  # their own tests (test_golden_router.py too)
            continue
        set_folder, part, *rest = rel.parts
        key = "/".join(rest)
        kind = "package-card" if (part, key) == ("package", "memreg.json") else layout.document_kind(key)
        out.append((rel.as_posix(), kind))
    return out


def model_of(kind: str) -> type:
    return PackageCard if kind == "package-card" else layout.MODELS[kind]


def test_every_golden_file_is_a_document_of_a_known_kind():
    found = goldens()
    assert len(found) >= 10
    assert [p for p, kind in found if kind is None] == []


@pytest.mark.parametrize("path,kind", goldens(), ids=[p for p, _ in goldens()])
def test_every_golden_loads_and_keeps_its_content(path, kind):
    raw = (GOLDEN / path).read_text()
    parsed = model_of(kind).model_validate_json(raw)
    old = json.loads(raw)
    for before, after in RENAMED_SINCE.get(kind, {}).items():
        if before in old:
            old[after] = old.pop(before)
    for field, default in ADDED_SINCE.get(kind, {}).items():
        old.setdefault(field, default)
    again = json.loads(parsed.model_dump_json(exclude_none=kind == "package-card"))
    assert _utc_as_z(again) == _utc_as_z(old)  # no field dropped, renamed or retyped by today's model


def _utc_as_z(doc: object) -> object:
    """`+00:00` and `Z` spell one instant: older writers used the first (datetime.isoformat)."""
    if isinstance(doc, dict):
        return {k: _utc_as_z(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_utc_as_z(v) for v in doc]
    if isinstance(doc, str) and UTC_ISO.fullmatch(doc):
        return doc[: -len("+00:00")] + "Z"
    return doc


def test_every_kind_has_a_golden_and_a_format_version():
    kinds = {kind for _, kind in goldens()}
    assert kinds == {*layout.MODELS, "package-card"}
    for kind in kinds:
        assert "format_version" in model_of(kind).model_fields, kind


# registries written by earlier memreg keep working -------------------------------------------------
def _golden_registry(tmp_path: Path, golden_set: str) -> Path:
    """The format-1 registry (manifests, tag, yank) with the documents of `golden_set` over it."""
    root = tmp_path / "registry"
    shutil.copytree(GOLDEN / "format1" / "registry", root)
    shutil.copytree(GOLDEN / golden_set / "registry", root, dirs_exist_ok=True)
    return root


@pytest.mark.parametrize("golden_set", ["format1-set2", "format1-set3"])
def test_a_golden_catalog_serves_list_and_a_write_keeps_it_current(tmp_path, golden_set):
    """set2's catalog spells its version "format": still used as it is, and the next write of the
    catalog spells it format_version."""
    reg = Registry.open(str(_golden_registry(tmp_path, golden_set)))
    names, indexes, stale = catalog.read_indexes(reg.store, lambda: ["law"])
    assert not stale  # the catalog's copy is the current index: used, and nothing to refresh
    assert indexes[layout.index_key("law")] == reg.store.read(layout.index_key("law"))
    assert [(s.manifest.ref, s.tags) for s in reg.list(all_versions=True)] == [("law@0.1.0", []),
                                                                                 ("law@0.2.0", ["stable"])]
    reg.tag("law@0.2.0", "prod")
    written = json.loads(reg.store.read(layout.CATALOG_KEY))
    assert written["format_version"] == 1 and "format" not in written
    assert written["indexes"]["law"].encode() == reg.store.read(layout.index_key("law"))


@pytest.mark.parametrize("golden_set", ["format1-set2", "format1-set3"])
def test_a_golden_lease_protects_its_blobs_from_gc(tmp_path, golden_set):
    root = _golden_registry(tmp_path, golden_set)
    reg = Registry.open(str(root))
    (lease_key,) = reg.store.list(layout.LEASES)
    leased = Lease.model_validate_json(reg.store.read(lease_key)).blobs[0]
    (root / leased).parent.mkdir(parents=True, exist_ok=True)
    (root / leased).write_bytes(b"a blob of a publish in flight")
    stray = root / layout.blob_key_of("0" * 64)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"nobody's")
    removed = reg.gc(grace=timedelta(0)).removed_blobs
    assert removed == [layout.blob_key_of("0" * 64)] and (root / leased).exists()


def test_a_lease_of_a_newer_format_stops_gc_before_it_deletes(tmp_path):
    root = _golden_registry(tmp_path, "format1-set3")
    reg = Registry.open(str(root))
    (lease_key,) = reg.store.list(layout.LEASES)
    doc = json.loads(reg.store.read(lease_key))
    reg.store.put_bytes(lease_key, json.dumps({**doc, "format_version": 2, "protects": "unknown"}).encode())
    stray = root / layout.blob_key_of("0" * 64)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"maybe what the newer lease protects")
    with pytest.raises(UnsupportedFormatError, match="upgrade memreg to run gc"):
        reg.gc(grace=timedelta(0))
    assert stray.exists()
