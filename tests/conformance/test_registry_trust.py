"""Issue 11, registry half: the registry heals and re-verifies what it serves, on every backend
(local folder, memory://, moto S3 over HTTP). Each test reproduces one attack first."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta

import pytest

from memreg.registry import Registry
from memreg.registry.api import LEASES, blob_key, manifest_key
from memreg.registry.errors import InvalidArgumentError, InvalidReferenceError, ManifestError


@pytest.fixture
def reg(registry_url) -> Registry:
    return Registry.init(registry_url)


def _orphan_everything(reg: Registry, ref: str) -> list:
    """Turn a published version's blobs into old orphans: no manifest, no lease (what a publish
    crashed long ago, or a deleted version, leaves)."""
    m = reg.resolve(ref)
    reg.store.delete(manifest_key(m.name, m.version))
    for key in reg.store.list(LEASES):
        reg.store.delete(key)
    return list(m.model.files)


def _before_manifest(reg: Registry, monkeypatch, action) -> None:
    """Run `action` in the window between "blob already there, skip it" and the manifest's create."""
    create = reg.store.create

    def create_after(key, data):
        if key.startswith("packages/") and key.count("/") == 2:
            action()
        return create(key, data)

    monkeypatch.setattr(reg.store, "create", create_after)


# finding 2: gc vs publish ---------------------------------------------------------------------
def test_gc_between_skip_and_manifest_keeps_the_reused_blobs(reg, tiny_package, monkeypatch):
    reg.publish(tiny_package, name="law", version="1.0.0")
    _orphan_everything(reg, "law@1.0.0")
    gcs = []
    _before_manifest(reg, monkeypatch, lambda: gcs.append(reg.gc(grace=timedelta(0))))
    res = reg.publish(tiny_package, name="law", version="2.0.0")
    assert res.created and res.uploaded == 0  # every blob was reused, none re-uploaded
    assert gcs[0].removed_blobs == [] and gcs[0].kept_recent == len(res.manifest.model.files)  # the lease held
    assert reg.verify().ok
    assert reg.pull("law@2.0.0").is_dir()


def test_blob_deleted_after_the_check_is_restored_once_the_manifest_exists(reg, tiny_package, monkeypatch):
    """A gc that listed the leases just before ours was written deletes in the window anyway."""
    reg.publish(tiny_package, name="law", version="1.0.0")
    files = _orphan_everything(reg, "law@1.0.0")
    _before_manifest(reg, monkeypatch, lambda: [reg.store.delete(blob_key(e)) for e in files])
    res = reg.publish(tiny_package, name="law", version="2.0.0")
    assert reg.verify().ok
    assert res.created and res.healed == len(files)
    folder = reg.pull("law@2.0.0")
    assert (folder / "model.safetensors").read_bytes() == (tiny_package / "model.safetensors").read_bytes()


def test_republishing_the_same_content_restores_a_lost_blob(reg, tiny_package):
    m = reg.publish(tiny_package, name="law", version="1.0.0").manifest
    weights = next(e for e in m.model.files if e.path == "model.safetensors")
    reg.store.delete(blob_key(weights))
    assert not reg.verify("law@1.0.0").ok
    again = reg.publish(tiny_package, name="law", version="1.0.0")
    assert reg.verify().ok
    assert not again.created and again.healed == 1 and again.uploaded == 1


def test_gc_refuses_nan_and_negative_grace(reg):
    for grace in (timedelta(hours=-1), timedelta(seconds=-1)):
        with pytest.raises(InvalidArgumentError, match="non-negative"):
            reg.gc(grace=grace)


# finding 3: a corrupt blob is healed -----------------------------------------------------------
def _flip_one_byte(reg: Registry, entry) -> None:
    key = blob_key(entry)
    data = bytearray(reg.store.read(key))
    data[len(data) // 2] ^= 0x01
    reg.store.put_bytes(key, bytes(data))


def test_publish_heals_a_corrupt_blob_of_the_same_size(reg, tiny_package):
    m = reg.publish(tiny_package, name="law", version="1.0.0").manifest
    weights = next(e for e in m.model.files if e.path == "model.safetensors")
    _flip_one_byte(reg, weights)
    assert not reg.verify("law@1.0.0").ok
    res = reg.publish(tiny_package, name="law", version="1.1.0")
    assert reg.verify().ok  # the new version is born whole, and the old one is healed with it
    assert res.created and res.healed == 1
    assert hashlib.sha256(reg.store.read(blob_key(weights))).hexdigest() == weights.hex


# finding 7: a manifest must match its path; sizes are checked per reference ---------------------
def _plant(reg: Registry, name: str, version: str, doc: dict) -> str:
    key = manifest_key(name, version)
    reg.store.put_bytes(key, json.dumps(doc).encode())
    return key


def test_manifest_at_the_wrong_path_is_never_served(reg, tiny_package, caplog):
    m = reg.publish(tiny_package, name="law", version="1.0.0").manifest
    doc = json.loads(m.model_dump_json())
    key = _plant(reg, "law", "3.0.0", {**doc, "name": "evil", "version": "9.9.9"})
    with caplog.at_level(logging.WARNING, logger="memreg.registry"):
        listed = reg.list(all_versions=True)
        assert reg.package("law").versions() == ["1.0.0"]  # `show` reads every manifest the listing has
    assert [(s.manifest.name, s.manifest.version) for s in listed] == [("law", "1.0.0")]
    assert key in caplog.text
    assert reg.resolve("law").version == "1.0.0"  # the phantom "highest" version is skipped
    with pytest.raises(ManifestError, match="evil@9.9.9, not law@3.0.0"):
        reg.resolve("law@3.0.0")
    with pytest.raises(ManifestError):
        reg.tag("law@3.0.0", "prod")
    assert reg.tags("law") == {}
    report = reg.verify()
    assert not report.ok and any(key in p for p in report.problems)


def test_whole_registry_verify_checks_every_declared_size(reg, tiny_package):
    m = reg.publish(tiny_package, name="law", version="1.0.0").manifest
    doc = json.loads(m.model_dump_json())
    doc["version"] = "1.1.0"
    doc["model"]["files"][0]["size"] += 1  # right digest, wrong size
    _plant(reg, "law", "1.1.0", doc)
    report = reg.verify()
    assert [p.split(":")[0] for p in report.problems] == ["law@1.1.0"]
    assert "the manifest declares" in report.problems[0]


# finding 8: one stray entry is skipped, never fatal ---------------------------------------------
def test_stray_entries_are_skipped_with_a_warning_naming_them(reg, tiny_package, caplog):
    m = reg.publish(tiny_package, name="law", version="1.0.0").manifest
    doc = json.loads(m.model_dump_json())
    reg.store.put_bytes("packages/law/notes.json", b"my notes")
    reg.store.put_bytes("packages/Law/1.0.0.json", m.model_dump_json().encode())
    reg.store.put_bytes("packages/law/01.0.0.json", m.model_dump_json().encode())
    dup = {**doc, "version": "1.5.0"}
    dup["model"] = {**doc["model"], "files": doc["model"]["files"] + doc["model"]["files"][:1]}
    dup_key = _plant(reg, "law", "1.5.0", dup)
    with caplog.at_level(logging.WARNING, logger="memreg.registry"):
        assert [s.manifest.ref for s in reg.list()] == ["law@1.0.0"]
        assert reg.pull("law").is_dir()
        report = reg.verify()
        gc = reg.gc(grace=timedelta(0))
    assert report.checked_versions == ["law@1.0.0"]
    assert len(report.problems) == 1 and dup_key in report.problems[0] and "unique" in report.problems[0]
    assert gc.removed_blobs == []  # blobs a malformed manifest mentions stay too
    for stray in ("packages/law/notes.json", "packages/Law/", "packages/law/01.0.0.json", dup_key):
        assert stray in caplog.text, stray


# finding 9: bounded lengths --------------------------------------------------------------------
def test_overlong_version_is_refused_before_any_upload(reg, tiny_package):
    with pytest.raises(InvalidReferenceError, match="at most 64"):
        reg.publish(tiny_package, name="law", version="1.0.0-" + "a" * 242)
    assert reg.store.list("blobs") == []


# finding 4 and 11: the cache is re-verified, assembly never writes through links ---------------
def test_bytes_overwritten_in_the_cache_are_healed_on_the_next_pull(reg, tiny_package):
    reg.publish(tiny_package, name="law", version="1.0.0")
    folder = reg.pull("law")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.chmod(0o644)
    weights.write_bytes(bytes(data))  # same size, new mtime
    again = reg.pull("law")
    assert (again / "model.safetensors").read_bytes() == (tiny_package / "model.safetensors").read_bytes()


def test_pull_verify_rehashes_even_when_size_and_mtime_were_restored(reg, tiny_package):
    import os

    reg.publish(tiny_package, name="law", version="1.0.0")
    weights = reg.pull("law") / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.chmod(0o644)
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # an attacker hiding the change
    healed = reg.pull("law", verify=True) / "model.safetensors"
    assert healed.read_bytes() == (tiny_package / "model.safetensors").read_bytes()


def test_a_file_dropped_into_a_cached_package_is_not_served(reg, tiny_package):
    reg.publish(tiny_package, name="law", version="1.0.0")
    folder = reg.pull("law")
    (folder / "modeling_evil.py").write_text("import os")
    assert not (reg.pull("law") / "modeling_evil.py").exists()


@pytest.mark.parametrize("extra", ["memreg.json", "MEMREG.json", "modeling_evil.py", "weights.bin", ".hidden"])
def test_manifest_listing_a_forbidden_file_is_refused_and_corrupts_nothing(reg, tiny_package, extra):
    m = reg.publish(tiny_package, name="law", version="1.0.0").manifest
    first = reg.pull("law@1.0.0")
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    doc = json.loads(m.model_dump_json())
    doc["version"] = "2.0.0"
    doc["model"]["files"].append({**doc["model"]["files"][0], "path": extra})
    key = _plant(reg, "law", "2.0.0", doc)
    with pytest.raises(ManifestError, match=key):
        reg.pull("law@2.0.0")
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert reg.pull("law@1.0.0") == first


# finding 2: gc and upload temp files ------------------------------------------------------------
def test_gc_with_zero_grace_leaves_a_young_upload_temp_file_alone(tmp_path, tiny_package):
    import os
    import time

    from memreg.registry.api import UPLOAD_FLOOR

    reg = Registry.init(str(tmp_path / "registry"))
    blobs = tmp_path / "registry" / "blobs" / "sha256" / "ab"
    blobs.mkdir(parents=True)
    live = blobs / (".tmp-" + "ab" * 32 + ".live")
    live.write_bytes(b"a publisher is writing this")
    dead = blobs / (".tmp-" + "ab" * 32 + ".dead")
    dead.write_bytes(b"left by a publisher killed long ago")
    old = time.time() - UPLOAD_FLOOR.total_seconds() - 60
    os.utime(dead, (old, old))
    report = reg.gc(grace=timedelta(0))
    assert report.removed_uploads == [dead.relative_to(tmp_path / "registry").as_posix()]
    assert live.exists() and not dead.exists()


def test_gc_survives_a_temp_file_that_vanishes_while_it_looks(tmp_path, monkeypatch):
    from pathlib import Path

    reg = Registry.init(str(tmp_path / "registry"))
    gone = tmp_path / "registry" / "blobs" / ".tmp-gone.123"
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: iter([gone]))
    assert reg.gc(grace=timedelta(0)).removed_uploads == []


# finding 3 on S3: the ETag of a multipart upload is recomputed too ------------------------------
def test_s3_same_content_recognises_multipart_etags(s3_url, tmp_path):
    import os

    from memreg.registry.store import open_store

    store = open_store(s3_url)
    body = os.urandom(11 * 2**20 + 7)
    local = tmp_path / "big"
    local.write_bytes(body)
    hexdigest = hashlib.sha256(body).hexdigest()
    store.fs.put_file(str(local), store._path("blobs/big"), chunksize=5 * 2**20)  # three parts
    assert store.fs.info(store._path("blobs/big"))["ETag"].strip('"').endswith("-3")
    assert store.same_content("blobs/big", local, hexdigest, len(body))
    flipped = bytearray(body)
    flipped[6 * 2**20] ^= 1
    store.fs.pipe_file(store._path("blobs/small"), bytes(flipped))  # single part, same size, one bit off
    assert not store.same_content("blobs/small", local, hexdigest, len(body))
    store.fs.put_file(str(local), store._path("blobs/small"))
    assert store.same_content("blobs/small", local, hexdigest, len(body))


def test_gc_expires_old_leases_and_then_removes_what_they_protected(tmp_path, tiny_package):
    import os
    import time

    from memreg.registry.api import LEASE_TTL

    reg = Registry.init(str(tmp_path / "registry"))
    reg.publish(tiny_package, name="law", version="1.0.0")
    reg.store.delete(manifest_key("law", "1.0.0"))  # blobs now orphans, still leased
    assert reg.gc(grace=timedelta(0)).removed_blobs == []
    old = time.time() - LEASE_TTL.total_seconds() - 60
    for key in reg.store.list(LEASES):
        os.utime(tmp_path / "registry" / key, (old, old))
    blobs = reg.store.list("blobs")
    assert sorted(reg.gc(grace=timedelta(0)).removed_blobs) == blobs
    assert reg.store.list("blobs") == [] and reg.store.list(LEASES) == []


# round 2, finding 1: gc recognised documents by substring ------------------------------------
LAYOUT_WORDS = ["tags", "yanked", "index", "leases", "blobs", "sha256", "packages", "latest", "memreg-registry.json"]


def test_packages_named_after_layout_words_keep_their_blobs_through_gc(reg, tiny_package, tmp_path):
    """packages/tags/1.0.0.json is a manifest, not a tag pointer: gc once skipped every key
    containing /tags/ or /yanked/ and deleted such a package's blobs."""
    import shutil

    from memreg.registry.layout import parse_package_key

    own_blob = {}
    for word in LAYOUT_WORDS:
        folder = shutil.copytree(tiny_package, tmp_path / word)
        (folder / "NOTES.txt").write_text(f"the {word} package\n")  # a blob no other package has
        m = reg.publish(folder, name=word, version="1.0.0").manifest
        reg.tag(f"{word}@1.0.0", "stable")
        reg.yank(f"{word}@1.0.0")
        reg.unyank(f"{word}@1.0.0")
        own_blob[word] = blob_key(next(f for f in m.model.files if f.path == "NOTES.txt"))
    for key in reg.store.list(LEASES):  # no publish in flight: only the manifests protect blobs
        reg.store.delete(key)
    report = reg.gc(grace=timedelta(0))
    assert report.removed_blobs == []
    for word in LAYOUT_WORDS:
        assert reg.store.exists(own_blob[word])
        assert reg.verify(f"{word}@1.0.0").ok
        assert (reg.pull(f"{word}@1.0.0") / "NOTES.txt").read_text() == f"the {word} package\n"
        assert parse_package_key(manifest_key(word, "1.0.0")).kind == "manifest"
