"""Registry operations, run on every backend (local folder, memory://, moto S3 over HTTP)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest

from memreg.registry import Registry
from memreg.registry.errors import (
    DigestMismatchError,
    InvalidReferenceError,
    ManifestNotFoundError,
    RegistryNotFoundError,
    VersionExistsError,
)


@pytest.fixture
def reg(registry_url) -> Registry:
    return Registry.init(registry_url)


def test_open_refuses_a_url_without_registry(registry_url):
    with pytest.raises(RegistryNotFoundError, match="memreg init"):
        Registry.open(registry_url)


def test_publish_then_pull_gives_the_same_bytes(reg, tiny_package):
    res = reg.publish(tiny_package, name="law", version="1.0.0")
    assert res.created and res.uploaded == len(res.manifest.model.files)
    folder = reg.pull("law")
    for entry in res.manifest.model.files:
        if entry.path != "README.md":  # the model card publish renders from the manifest
            assert (folder / entry.path).read_bytes() == (tiny_package / entry.path).read_bytes()
    assert "# law\n" in (folder / "README.md").read_text()
    manifest = json.loads((folder / "memreg.json").read_text())
    assert manifest["name"] == "law" and manifest["version"] == "1.0.0"
    assert manifest["model"]["architecture"] == "GPT2LMHeadModel"
    assert manifest["model"]["embedding_rows"] == 400
    assert manifest["tokenizer"]["vocab_size"] == 400


def test_pulled_folder_loads_with_transformers(reg, tiny_package):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reg.publish(tiny_package, name="law", version="1.0.0")
    folder = reg.pull("law@1.0.0")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size == len(tok) == 400


def test_same_content_is_a_noop_different_content_is_refused(reg, tiny_package):
    first = reg.publish(tiny_package, name="law", version="1.0.0", description="licences")
    again = reg.publish(tiny_package, name="law", version="1.0.0", description="licences")
    assert not again.created and again.manifest.created_at == first.manifest.created_at
    with pytest.raises(VersionExistsError, match="law@1.0.0 already exists"):
        reg.publish(tiny_package, name="law", version="1.0.0", description="something else")
    assert reg.resolve("law@1.0.0").description == "licences"


def test_second_publish_uploads_no_shared_blob(reg, tiny_package):
    reg.publish(tiny_package, name="law", version="1.0.0")
    res = reg.publish(tiny_package, name="law", version="1.1.0")
    assert res.created and res.uploaded == 0 and res.skipped == len(res.manifest.model.files)


def test_resolution_order_tags_and_yank(reg, tiny_package):
    for v in ["1.0.0", "1.10.0", "1.2.0", "2.0.0-rc.1"]:
        reg.publish(tiny_package, name="law", version=v)
    assert reg.versions("law") == ["1.0.0", "1.2.0", "1.10.0", "2.0.0-rc.1"]
    assert reg.resolve("law").version == "2.0.0-rc.1"
    reg.yank("law@2.0.0-rc.1")
    assert reg.resolve("law").version == "1.10.0"
    assert reg.resolve("law:latest").version == "1.10.0"
    assert reg.resolve("law@2.0.0-rc.1").version == "2.0.0-rc.1"  # still pullable by version
    move = reg.tag("law@1.2.0", "stable")
    assert (move.previous, move.version) == (None, "1.2.0")
    assert reg.tag("law@1.0.0", "stable").previous == "1.2.0"
    assert reg.resolve("law:stable").version == "1.0.0"
    with pytest.raises(InvalidReferenceError, match="latest"):
        reg.tag("law@1.0.0", "latest")
    with pytest.raises(ManifestNotFoundError):
        reg.resolve("law:nightly")


def test_list_filters(reg, tiny_package, tmp_path):
    from memreg.schemas import DomainMetadata

    reg.publish(tiny_package, name="law", version="1.0.0", domain=DomainMetadata(labels=["law"]))
    reg.publish(tiny_package, name="code", version="0.1.0", domain=DomainMetadata(labels=["code"]))
    assert [s.manifest.name for s in reg.list()] == ["code", "law"]
    assert [s.manifest.name for s in reg.list(domain="law")] == ["law"]
    fp = reg.resolve("law").tokenizer.digest
    assert len(reg.list(fingerprint=fp)) == 2
    assert reg.list(fingerprint="sha256:" + "0" * 64) == []


def test_list_compatible_with_ignores_a_pad_only_difference(reg, tiny_package):
    """A model whose tokenizer sets pad = eos (what fine-tuning scripts do) still finds the memories
    compose would attach to it; a digest still matches exactly."""
    from transformers import AutoTokenizer

    from memreg.registry.fingerprinting import fingerprint

    reg.publish(tiny_package, name="law", version="1.0.0")
    tok = AutoTokenizer.from_pretrained(str(tiny_package))
    tok.pad_token = tok.eos_token if tok.pad_token is None else None
    padded = fingerprint(tok)
    assert padded.digest != reg.resolve("law").tokenizer.digest
    assert [s.manifest.name for s in reg.list(fingerprint=padded)] == ["law"]
    assert reg.list(fingerprint=padded.digest) == []


def _corrupt_one_blob(reg: Registry, entry) -> None:
    from memreg.registry.api import blob_key

    key = blob_key(entry)
    data = bytearray(reg.store.read(key))
    data[len(data) // 2] ^= 0x01  # one flipped bit
    reg.store.put_bytes(key, bytes(data))


def test_missing_blob_is_named_as_missing_not_corrupt(reg, tiny_package, memreg_home):
    from memreg.registry.api import blob_key
    from memreg.registry.errors import BlobNotFoundError

    m = reg.publish(tiny_package, name="law", version="1.0.0").manifest
    weights = next(e for e in m.model.files if e.path == "model.safetensors")
    reg.store.delete(blob_key(weights))
    with pytest.raises(BlobNotFoundError, match="is missing from") as err:
        reg.pull("law@1.0.0")
    assert not isinstance(err.value, DigestMismatchError) and isinstance(err.value, FileNotFoundError)
    assert err.value.digest == weights.digest and err.value.path == "model.safetensors"


def test_flipped_byte_fails_pull_and_verify_and_never_enters_cache(reg, tiny_package, memreg_home):
    m = reg.publish(tiny_package, name="law", version="1.0.0").manifest
    weights = next(e for e in m.model.files if e.path == "model.safetensors")
    _corrupt_one_blob(reg, weights)
    with pytest.raises(DigestMismatchError) as err:
        reg.pull("law@1.0.0")
    assert weights.digest in str(err.value) and "model.safetensors" in str(err.value)
    report = reg.verify("law@1.0.0")
    assert not report.ok and any(weights.digest in p for p in report.problems)
    cached = [p for p in memreg_home.rglob("*") if p.is_file()]
    hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in cached}
    assert weights.hex not in {p.name for p in cached}
    assert not any(p.name.startswith(".tmp") for p in cached)
    assert hashlib.sha256(reg.store.read(f"blobs/sha256/{weights.hex[:2]}/{weights.hex}")).hexdigest() not in hashes


def test_second_pull_downloads_nothing(reg, tiny_package, monkeypatch):
    reg.publish(tiny_package, name="law", version="1.0.0")
    first = reg.pull("law")
    calls = []
    for method in ("open_read", "get_file"):  # the blob download paths; manifests may be re-read
        monkeypatch.setattr(reg.store, method, lambda *a, **k: calls.append(a) or pytest.fail("downloaded"))
    assert reg.pull("law") == first and calls == []


def test_gc_removes_only_unreferenced_blobs(reg, tiny_package, tmp_path):
    reg.publish(tiny_package, name="law", version="1.0.0")
    orphan = tmp_path / "orphan"
    orphan.write_bytes(b"left behind by a crashed publisher")
    digest = hashlib.sha256(orphan.read_bytes()).hexdigest()
    reg.store.put_file(f"blobs/sha256/{digest[:2]}/{digest}", orphan)
    kept = reg.gc(grace=timedelta(hours=1))
    assert kept.removed_blobs == [] and kept.kept_recent == 1
    report = reg.gc(grace=timedelta(0))
    assert report.removed_blobs == [f"blobs/sha256/{digest[:2]}/{digest}"]
    assert reg.verify().ok and reg.pull("law")


def test_publish_without_a_card_asks_for_name_and_version_and_an_adapter_for_merging(reg, tmp_path, tiny_package):
    """Registry.publish said "'' is not a valid name" for a folder without memreg.json, and "save the
    model with save_pretrained" for a PEFT adapter folder that was saved so; nothing is written."""
    from memreg.registry.errors import InvalidArgumentError, PackageError

    with pytest.raises(InvalidArgumentError, match=r"no memreg.json card .* give name= and version="):
        reg.publish(tiny_package)
    with pytest.raises(InvalidArgumentError, match="give name= and version="):
        reg.publish(tiny_package, name="law")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (adapter / "adapter_model.safetensors").write_bytes((tiny_package / "model.safetensors").read_bytes())
    with pytest.raises(PackageError, match="is a PEFT adapter, which memreg attaches as it is.*merge_and_unload"):
        reg.publish(adapter, name="law", version="1.0.0")
    assert reg.store.list("packages") == [] and reg.store.list("blobs") == []
