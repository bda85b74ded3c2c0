"""Package indexes (index/<name>.json): `list` answers from one listing of names and one batch of
index reads; an index that is missing or damaged is rebuilt from the manifests, a publisher killed
between its manifest and the index is still listed, and `show`/`verify --repair` bring a stale index
back to the truth."""

from __future__ import annotations

import json
import logging

import pytest

from memreg.registry import Registry
from memreg.registry import index as name_index
from memreg.registry.catalog import KEY as CATALOG
from memreg.registry.errors import ManifestNotFoundError
from memreg.registry.index import index_key
from memreg.schemas import NameIndex


@pytest.fixture
def reg(law_and_code) -> Registry:  # tests/conftest.py
    return law_and_code


def _listed(reg: Registry, **kw) -> list[tuple[str, str, bool, list[str]]]:
    return [(s.manifest.ref, s.manifest.description, s.yanked, s.tags) for s in reg.list(**kw)]


def _reads(reg: Registry, monkeypatch) -> list[str]:
    """Record every key `list` reads, one call at a time."""
    seen: list[str] = []
    inside = []  # the thread-pool read_many calls read: count each key once
    read, read_many = reg.store.read, reg.store.read_many

    def spy_read(key):
        if not inside:
            seen.append(key)
        return read(key)

    def spy_read_many(keys):
        seen.extend(keys)
        inside.append(1)
        try:
            return read_many(keys)
        finally:
            inside.pop()

    monkeypatch.setattr(reg.store, "read", spy_read)
    monkeypatch.setattr(reg.store, "read_many", spy_read_many)
    return seen


def _index(reg: Registry, name: str) -> NameIndex:
    return NameIndex.model_validate_json(reg.store.read(index_key(name)))


EXPECTED = [("code@0.1.0", "code", False, []), ("law@1.1.0", "second", False, [])]


def test_publish_indexes_so_list_reads_no_manifest(reg, monkeypatch):
    assert sorted(_index(reg, "law").versions) == ["1.0.0", "1.1.0"]
    reads = _reads(reg, monkeypatch)
    assert _listed(reg) == EXPECTED
    # no manifest: the indexes' copies in the catalog, whose etags S3 lists (a folder reads the indexes to hash them)
    assert set(reads) <= {CATALOG, index_key("code"), index_key("law")}
    if reg.store.url.startswith("s3://"):
        assert reads == []  # the catalog is read with its etag; no index is read
    assert [s.manifest.ref for s in reg.list(all_versions=True)] == ["code@0.1.0", "law@1.0.0", "law@1.1.0"]
    assert not [k for k in reads if k.startswith("packages/")]


def test_a_publisher_killed_before_the_index_update_is_found_and_indexed(reg, tiny_package, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(name_index, "published", lambda *a, **k: None)  # dies right after creating the manifest
        reg.publish(tiny_package, name="law", version="2.0.0", description="third")
    assert _index(reg, "law").versions["2.0.0"].summary is None  # announced, never marked published
    assert ("law@2.0.0", "third", False, []) in _listed(reg)
    assert _index(reg, "law").versions["2.0.0"].summary.description == "third"  # the reader wrote the repair
    reads = _reads(reg, monkeypatch)
    reg.list()
    assert not [k for k in reads if k.startswith("packages/")]  # and the next reader needs no manifest


def _misfiled(reg: Registry, damage: str) -> bytes:
    """law's index with an entry filed under a key that is not its own."""
    index = _index(reg, "law")
    if damage == "summary under another version":
        return index.model_copy(update={"versions": {**index.versions, "1.1.0": index.versions["1.0.0"]}}).model_dump_json().encode()
    (_, fp), = index.fingerprints.items()
    return index.model_copy(update={"fingerprints": {"sha256:" + "0" * 64: fp}}).model_dump_json().encode()


@pytest.mark.parametrize("damage", ["delete", "garbage", "other name", "wrong schema", "summary under another version",
                                    "fingerprint under another digest"])
def test_a_missing_or_damaged_index_is_rebuilt(reg, damage, caplog):
    key = index_key("law")
    if damage == "delete":
        reg.store.delete(key)
    elif damage in ("summary under another version", "fingerprint under another digest"):
        reg.store.put_bytes(key, _misfiled(reg, damage))
    else:
        raw = {"garbage": b"{not json", "other name": _index(reg, "code").model_dump_json().encode(),
               "wrong schema": b'{"format_version": 1, "name": "law", "versions": {"1.1.0": {"token": 3}}}'}[damage]
        reg.store.put_bytes(key, raw)
    with caplog.at_level(logging.WARNING, logger="memreg.registry"):
        assert _listed(reg) == EXPECTED
    if damage != "delete":
        assert "rebuilt from the manifests" in caplog.text
    assert sorted(_index(reg, "law").versions) == ["1.0.0", "1.1.0"]
    assert [s.manifest.ref for s in reg.list(fingerprint=_index(reg, "law").versions["1.1.0"].summary.tokenizer,
                                             all_versions=True)] == ["code@0.1.0", "law@1.0.0", "law@1.1.0"]


def test_damage_below_the_printed_entry_waits_for_list_all(reg, caplog):
    """`list` validates only the entries it prints; `list --all` validates every one and rebuilds."""
    doc = _index(reg, "law").model_dump(mode="json")
    doc["versions"]["1.0.0"]["summary"]["parameter_count"] = "many"
    reg.store.put_bytes(index_key("law"), json.dumps(doc).encode())
    with caplog.at_level(logging.WARNING, logger="memreg.registry"):
        assert _listed(reg) == EXPECTED
        assert "rebuilt" not in caplog.text
        assert [r for r, *_ in _listed(reg, all_versions=True)] == ["code@0.1.0", "law@1.0.0", "law@1.1.0"]
    assert "rebuilt from the manifests" in caplog.text
    assert _index(reg, "law").versions["1.0.0"].summary.parameter_count > 0  # the repair was written


@pytest.mark.parametrize("ref", ["law", "law:latest", "law@1.0.0"])
def test_show_lists_the_package_once(reg, monkeypatch, ref):
    listed = []
    original = reg.store.list
    monkeypatch.setattr(reg.store, "list", lambda prefix: listed.append(prefix) or original(prefix))
    m, state = reg.show(ref)
    assert m.version == ("1.0.0" if "@" in ref else "1.1.0") and state.versions() == ["1.0.0", "1.1.0"]
    assert listed.count("packages/law") == 1  # was 2 for a bare name: resolve and the state each listed


def test_show_and_repair_bring_a_stale_index_back_to_the_truth(reg):
    index = _index(reg, "law")
    entry = index.versions["1.1.0"]
    lying = entry.model_copy(update={"summary": entry.summary.model_copy(update={"description": "LIE"})})
    phantom = entry.model_copy(update={"summary": entry.summary.model_copy(update={"version": "9.9.9"})})
    forged = index.model_copy(update={"versions": {**index.versions, "1.1.0": lying, "9.9.9": phantom}})
    reg.store.put_bytes(index_key("law"), forged.model_dump_json().encode())
    assert reg.package("law").versions() == ["1.0.0", "1.1.0"]  # show reads the listing: no phantom
    assert sorted(_index(reg, "law").versions) == ["1.0.0", "1.1.0"]  # and repaired the index
    reg.store.put_bytes(index_key("law"), forged.model_dump_json().encode())
    assert reg.rebuild_index() == ["code", "law"]
    assert _listed(reg) == EXPECTED  # every summary re-read from the manifests


def test_show_answers_what_resolve_and_package_answer_and_writes_no_index_for_a_typo(reg):
    m, state = reg.show("law")
    assert m == reg.resolve("law") and m.version == "1.1.0"
    assert (state.listed, state.tags) == (reg.package("law").listed, reg.package("law").tags)
    with pytest.raises(ManifestNotFoundError):
        reg.show("lwa")
    assert not reg.store.exists(index_key("lwa"))  # the package half ran too, and wrote nothing
    assert [s.manifest.name for s in reg.list()] == ["code", "law"]


def test_a_dead_publishers_announcement_is_not_listed_and_expires(reg, tiny_package, monkeypatch):
    from datetime import datetime, timedelta, timezone

    from memreg.schemas import IndexedVersion

    now = datetime.now(timezone.utc)
    index = _index(reg, "law")
    announced = {"3.0.0": IndexedVersion(pending_since=now), "4.0.0": IndexedVersion(pending_since=now - timedelta(hours=2))}
    reg.store.put_bytes(index_key("law"), index.model_copy(update={"versions": {**index.versions, **announced}})
                        .model_dump_json().encode())
    assert _listed(reg) == EXPECTED  # announced without a manifest: not a version
    reg.package("law")  # the truth: the young announcement may be a live publisher, the old one is dead
    assert sorted(_index(reg, "law").versions) == ["1.0.0", "1.1.0", "3.0.0"]
    reg.publish(tiny_package, name="law", version="3.0.0", description="late")
    assert ("law@3.0.0", "late", False, []) in _listed(reg)


def test_yanks_and_tag_moves_reach_the_index(reg, monkeypatch):
    reg.tag("law@1.0.0", "stable")
    reg.yank("law@1.1.0")
    assert _listed(reg) == [("code@0.1.0", "code", False, []), ("law@1.0.0", "first", False, ["stable"])]
    reg.unyank("law@1.1.0")
    reg.tag("law@1.1.0", "stable")
    assert _listed(reg) == [("code@0.1.0", "code", False, []), ("law@1.1.0", "second", False, ["stable"])]
    state = reg.package("law")
    assert (state.tags, state.yanked, state.listed) == ({"stable": "1.1.0"}, set(), ["1.0.0", "1.1.0"])


def test_a_reader_that_cannot_write_still_answers(reg, monkeypatch):
    reg.store.delete(index_key("law"))

    def refuse(*a, **k):
        raise PermissionError("read-only credentials")

    monkeypatch.setattr(reg.store, "swap", refuse)
    assert _listed(reg) == EXPECTED


def test_a_yank_killed_before_its_index_update_heals_on_show(reg, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(name_index, "set_yanked", lambda *a, **k: None)
        reg.yank("law@1.1.0")
    assert reg.resolve("law").version == "1.0.0"  # resolution reads the yank records, never the index
    assert ("law@1.1.0", "second", False, []) in _listed(reg)  # list trusts the index: stale, as documented
    assert reg.package("law").yanked == {"1.1.0"}  # show reads the truth and repairs the index
    assert ("law@1.0.0", "first", False, []) in _listed(reg)


def test_a_registry_without_indexes_lists_everything(reg):
    for name in ("law", "code"):
        reg.store.delete(index_key(name))  # as a registry written by a memreg before indexes
    assert _listed(reg) == EXPECTED
    assert [s.manifest.ref for s in reg.list(all_versions=True)] == ["code@0.1.0", "law@1.0.0", "law@1.1.0"]


# issue 23 item 4: one damaged index is rebuilt with a warning naming it, never fatal for everyone --------
def _put_index(reg: Registry, doc: dict) -> None:
    reg.store.put_bytes(index_key("law"), json.dumps(doc).encode())


@pytest.mark.parametrize("all_versions", [False, True], ids=["list", "list-all"])
def test_a_version_key_that_is_not_semver_is_rebuilt_with_a_warning(reg, caplog, all_versions):
    doc = _index(reg, "law").model_dump(mode="json")
    doc["versions"]["banana"] = doc["versions"]["1.1.0"]  # made `list` and `list --all` fail for every package
    _put_index(reg, doc)
    with caplog.at_level(logging.WARNING, logger="memreg.registry"):
        listed = [s.manifest.ref for s in reg.list(all_versions=all_versions)]
    assert listed == (["code@0.1.0", "law@1.0.0", "law@1.1.0"] if all_versions else ["code@0.1.0", "law@1.1.0"])
    assert f"{reg.url}/{index_key('law')}" in caplog.text and "'banana'" in caplog.text
    assert sorted(_index(reg, "law").versions) == ["1.0.0", "1.1.0"]  # rebuilt from the manifests


@pytest.mark.parametrize("all_versions", [False, True], ids=["list", "list-all"])
def test_an_index_without_a_summarys_fingerprint_is_rebuilt_with_a_warning(reg, caplog, all_versions):
    index = _index(reg, "law")
    digest = index.versions["1.1.0"].summary.tokenizer
    _put_index(reg, index.model_copy(update={"fingerprints": {}}).model_dump(mode="json"))
    with caplog.at_level(logging.WARNING, logger="memreg.registry"):
        listed = [s.manifest.ref for s in reg.list(fingerprint=digest, all_versions=all_versions)]  # was KeyError
    assert listed == (["code@0.1.0", "law@1.0.0", "law@1.1.0"] if all_versions else ["code@0.1.0", "law@1.1.0"])
    assert f"{reg.url}/{index_key('law')}" in caplog.text and digest in caplog.text
    assert digest in _index(reg, "law").fingerprints


def test_a_deeply_nested_index_is_rebuilt_with_a_warning(reg, caplog):
    reg.store.put_bytes(index_key("law"), b'{"name": "law", "versions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with caplog.at_level(logging.WARNING, logger="memreg.registry"):
        assert _listed(reg) == EXPECTED
    assert f"{reg.url}/{index_key('law')}" in caplog.text
    assert sorted(_index(reg, "law").versions) == ["1.0.0", "1.1.0"]


@pytest.mark.parametrize(("ref", "shown"), [("law", "1.1.0"), ("law@1.0.0", "1.0.0"), ("law:latest", "1.1.0")])
def test_forged_summaries_are_corrected_by_show_for_its_version_and_by_verify_repair_for_all(reg, ref, shown, caplog):
    """show compared only the set of versions with the listing: a summary that lies about a version
    that exists survived it, and `list` kept printing the lie. show checks the version it shows (it
    reads that manifest anyway; reading every manifest would cost minutes at 10,000 versions on S3);
    verify --repair checks them all."""
    index = _index(reg, "law")
    lie = {v: e.model_copy(update={"summary": e.summary.model_copy(update={"description": "LIE", "parameter_count": 1})})
           for v, e in index.versions.items()}
    reg.store.put_bytes(index_key("law"), index.model_copy(update={"versions": lie}).model_dump_json().encode())
    with caplog.at_level(logging.WARNING, logger="memreg.registry"):
        _, state = reg.show(ref)
    assert state.summaries[shown].description != "LIE" and f"law@{shown} that differs from its manifest" in caplog.text
    assert {v: e.summary.description != "LIE" for v, e in _index(reg, "law").versions.items()} == \
        {"1.0.0": shown == "1.0.0", "1.1.0": shown == "1.1.0"}
    reg.rebuild_index()
    assert [(e.summary.description, e.summary.parameter_count > 1) for _, e in sorted(_index(reg, "law").versions.items())] \
        == [("first", True), ("second", True)]
    assert [(r, d) for r, d, *_ in _listed(reg, all_versions=True)] == [("code@0.1.0", "code"), ("law@1.0.0", "first"),
                                                                        ("law@1.1.0", "second")]
