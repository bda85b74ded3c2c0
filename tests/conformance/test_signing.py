"""Issue 26: signed memories in the OpenSSF model-signing format, on every backend (local folder,
memory://, moto S3). Each attack of the issue is made for real against the stored documents, and
the trust policy must refuse it under require and say it under warn, before a byte is pulled."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from memreg.registry import Registry
from memreg.registry import signing, trust
from memreg.registry.api import LEASES
from memreg.registry.layout import blob_key, manifest_key, parse_package_key, signature_key, signatures_prefix


def make_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A P-256 key pair as PEM files (private PKCS#8, public SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def keys(tmp_path) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path / "keys"
    folder.mkdir()
    return {who: make_key(folder, who) for who in ("publisher", "reviewer", "stranger")}


@pytest.fixture
def reg(registry_url) -> Registry:
    return Registry.init(registry_url)


@pytest.fixture
def signed(reg, tiny_package, keys):
    """law@1.0.0 signed by the publisher, law@1.1.0 unsigned."""
    m = reg.publish(tiny_package, name="law", version="1.0.0").manifest
    signing.sign(reg, m, keys["publisher"][0])
    reg.publish(tiny_package, name="law", version="1.1.0")
    return m


def trusted(keys, *who: str) -> list[trust.TrustedKey]:
    return trust.trusted_keys([keys[w][1] for w in who])


def refused(reg, ref: str, keys: list) -> str:
    """The one line require refuses `ref` with; nothing of it may have been pulled."""
    with pytest.raises(trust.UntrustedMemoryError) as e:
        trust.enforce(reg, reg.resolve(ref), policy="require", keys=keys, warn=pytest.fail)
    warned: list[str] = []
    trust.enforce(reg, reg.resolve(ref), policy="warn", keys=keys, warn=warned.append)
    assert warned and warned[0].startswith(str(e.value).split(" (refused")[0]), warned
    assert "\n" not in str(e.value)
    assert not list((reg.cache.root / "packages").glob("*/*")), "pulled before the policy was checked"
    return str(e.value)


def test_signed_version_passes_and_pulled_folder_verifies_with_the_library(reg, signed, keys):
    check = trust.enforce(reg, signed, policy="require", keys=trusted(keys, "publisher"), warn=pytest.fail)
    assert check.ok and check.signers == [trusted(keys, "publisher")[0].fingerprint]
    folder = reg.pull(signed)
    (key, record, _), = signing.records(reg, signed)
    signing.verify_folder(folder, record, trusted(keys, "publisher")[0])  # model-signing re-hashes every file
    assert parse_package_key(key).kind == "signature" and parse_package_key(key).stem == "1.0.0"
    # the manifest was not touched by signing: its bytes are what publish wrote
    assert reg.store.read(manifest_key("law", "1.0.0")) == signed.model_dump_json(indent=2).encode()


def test_several_signatures_per_version_each_key_counts(reg, signed, keys):
    signing.sign(reg, signed, keys["reviewer"][0])
    assert len(signing.records(reg, signed)) == 2
    check = signing.check(reg, signed, trusted(keys, "publisher", "reviewer"))
    assert len(check.signers) == 2
    assert signing.check(reg, signed, trusted(keys, "reviewer")).ok  # the reviewer alone is enough


def test_the_signature_covers_the_manifest_and_its_provenance(reg, signed, keys):
    """memreg.json (name, version, training, metrics) is one of the signed files."""
    (_, record, _), = signing.records(reg, signed)
    listed = signing._verified_statement(record, trusted(keys, "publisher")[0])
    assert listed == signing.signed_files(signed)
    assert listed["memreg.json"] == hashlib.sha256((reg.pull(signed) / "memreg.json").read_bytes()).hexdigest()


def test_gc_keeps_signed_versions_whole(reg, signed, keys):
    """Signatures are documents, not blobs: gc neither deletes them nor counts them as references."""
    for key in reg.store.list(LEASES):
        reg.store.delete(key)
    report = reg.gc(grace=timedelta(0))
    assert report.removed_blobs == []
    assert signing.check(reg, signed, trusted(keys, "publisher")).ok
    assert reg.versions("law") == ["1.0.0", "1.1.0"]  # the signatures folder is no version


def test_package_named_signatures_is_still_a_package(reg, tiny_package, keys):
    m = reg.publish(tiny_package, name="signatures", version="1.0.0").manifest
    signing.sign(reg, m, keys["publisher"][0])
    assert reg.versions("signatures") == ["1.0.0"]
    assert signing.check(reg, m, trusted(keys, "publisher")).ok
    assert parse_package_key(manifest_key("signatures", "1.0.0")).kind == "manifest"


# the attacks of issue 26, part 5 ---------------------------------------------------------------
def test_attack_blob_swapped_after_signing_is_refused_by_pull(reg, signed, keys, tmp_path):
    """The signature still matches the manifest; the swapped bytes never reach the cache."""
    entry = next(e for e in signed.model.files if e.path.endswith(".safetensors"))
    evil = tmp_path / "evil"
    evil.write_bytes(b"\0" * entry.size)
    reg.store.put_file(blob_key(entry), evil)
    from memreg.registry.errors import DigestMismatchError

    with pytest.raises(DigestMismatchError, match="corrupt"):
        reg.pull(signed)


def test_attack_manifest_repointed_to_other_blobs(reg, signed, keys, tiny_package, tmp_path):
    other = shutil.copytree(tiny_package, tmp_path / "other")
    (other / "config.json").write_text((other / "config.json").read_text() + " ")  # other bytes, same model
    evil = reg.publish(other, name="evil", version="1.0.0").manifest
    forged = signed.model_copy(update={"model": evil.model})
    reg.store.put_bytes(manifest_key("law", "1.0.0"), forged.model_dump_json(indent=2).encode())
    line = refused(reg, "law@1.0.0", trusted(keys, "publisher"))
    assert "changed: " in line and "config.json" in line


def test_attack_signature_copied_from_another_version(reg, signed, keys):
    (key, _, _), = signing.records(reg, signed)
    raw = reg.store.read(key)
    reg.store.create(signature_key("law", "1.1.0", hashlib.sha256(raw).hexdigest()), raw)
    assert "was made for law@1.0.0, not law@1.1.0" in refused(reg, "law@1.1.0", trusted(keys, "publisher"))
    # renamed inside: the name no longer matches the bytes
    doc = json.loads(raw)
    doc["version"] = "1.1.0"
    raw2 = json.dumps(doc).encode()
    reg.store.create(signature_key("law", "1.1.0", hashlib.sha256(raw2).hexdigest()), raw2)
    line = refused(reg, "law@1.1.0", trusted(keys, "publisher"))
    assert "changed: " in line and "memreg.json" in line


def test_attack_tag_moved_to_unsigned_version(reg, signed, keys):
    reg.tag("law@1.0.0", "stable")
    assert trust.enforce(reg, reg.resolve("law:stable"), policy="require", keys=trusted(keys, "publisher"),
                         warn=pytest.fail).ok
    reg.tag("law@1.1.0", "stable")
    assert "law@1.1.0 is not signed" in refused(reg, "law:stable", trusted(keys, "publisher"))


def test_attack_signature_by_untrusted_key(reg, signed, keys):
    signing.sign(reg, reg.resolve("law@1.1.0"), keys["stranger"][0])
    assert "which you do not trust" in refused(reg, "law@1.1.0", trusted(keys, "publisher"))


def test_attack_forged_key_hint_does_not_verify(reg, signed, keys):
    """A stranger's signature that claims to be the publisher's key (the hint is not a proof)."""
    stranger = signing.sign(reg, reg.resolve("law@1.1.0"), keys["stranger"][0])
    for key in reg.store.list(signatures_prefix("law", "1.1.0")):
        reg.store.delete(key)
    fp = trusted(keys, "publisher")[0].fingerprint
    bundle = json.loads(json.dumps(stranger.bundle))
    bundle["verificationMaterial"]["publicKey"]["hint"] = fp
    forged = stranger.model_copy(update={"key_fingerprint": fp, "bundle": bundle}).model_dump_json().encode()
    reg.store.create(signature_key("law", "1.1.0", hashlib.sha256(forged).hexdigest()), forged)
    assert "does not verify with key" in refused(reg, "law@1.1.0", trusted(keys, "publisher"))


@pytest.mark.parametrize("damage", ["not json", "truncated bundle", "altered bytes", "bad signature bytes"])
def test_attack_malformed_signature_document(reg, signed, keys, damage):
    (key, record, _), = signing.records(reg, signed)
    raw = reg.store.read(key)
    reg.store.delete(key)
    if damage == "not json":
        bad = b"{not json"
    elif damage == "truncated bundle":
        bad = record.model_copy(update={"bundle": {"mediaType": "x"}}).model_dump_json().encode()
    elif damage == "bad signature bytes":
        bundle = json.loads(json.dumps(record.bundle))
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = "AAAA"
        bad = record.model_copy(update={"bundle": bundle}).model_dump_json().encode()
    else:  # edited in place, keeping its old name
        reg.store.create(key, raw.replace(b'"law"', b'"law" '))
        assert "was altered" in refused(reg, "law@1.0.0", trusted(keys, "publisher"))
        return
    reg.store.create(signature_key("law", "1.0.0", hashlib.sha256(bad).hexdigest()), bad)
    line = refused(reg, "law@1.0.0", trusted(keys, "publisher"))
    assert "signature " in line and ("not a valid signature document" in line or "does not verify" in line), line


def test_attack_signature_over_a_folder_with_an_extra_file(reg, signed, keys, tmp_path):
    """Signed with model-signing's own API over the pulled folder plus a file the version lacks."""
    from model_signing import hashing
    from model_signing import signing as ms_signing

    folder = shutil.copytree(reg.pull(signed), tmp_path / "extra")
    (folder / "evil.safetensors").write_bytes(b"\0" * 64)
    sig = tmp_path / "extra.sig"
    config = hashing.Config().set_ignored_paths(paths=signing.IGNORED)
    ms_signing.Config().use_elliptic_key_signer(private_key=keys["publisher"][0]).set_hashing_config(config).sign(folder, sig)
    shutil.rmtree(reg.cache.root / "packages")
    for key in reg.store.list(signatures_prefix("law", "1.0.0")):
        reg.store.delete(key)
    doc = json.dumps({"format_version": 1, "name": "law", "version": "1.0.0", "method": "key",
                      "key_fingerprint": trusted(keys, "publisher")[0].fingerprint,
                      "signed_at": "2026-01-01T00:00:00Z", "bundle": json.loads(sig.read_text())}).encode()
    reg.store.create(signature_key("law", "1.0.0", hashlib.sha256(doc).hexdigest()), doc)
    assert "not in the package: evil.safetensors" in refused(reg, "law@1.0.0", trusted(keys, "publisher"))


# the policy and the keys ----------------------------------------------------------------------
def test_off_checks_nothing_and_warn_without_keys_is_silent(reg, signed):
    assert trust.enforce(reg, reg.resolve("law@1.1.0"), policy="off", keys=[], warn=pytest.fail) is None
    assert trust.enforce(reg, reg.resolve("law@1.1.0"), policy="warn", keys=[], warn=pytest.fail) is None
    with pytest.raises(trust.TrustConfigError, match="needs a key you trust"):
        trust.enforce(reg, reg.resolve("law@1.0.0"), policy="require", keys=[], warn=pytest.fail)


def test_keys_from_env_and_trust_file(keys, tmp_path, monkeypatch):
    both = tmp_path / "trusted-keys.pem"
    both.write_bytes(keys["publisher"][1].read_bytes() + keys["reviewer"][1].read_bytes())
    monkeypatch.setenv("MEMREG_TRUST_FILE", str(both))
    assert len(trust.trusted_keys()) == 2
    monkeypatch.delenv("MEMREG_TRUST_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty-config"))
    assert trust.trusted_keys() == []
    monkeypatch.setenv("MEMREG_PUBLIC_KEYS", str(keys["stranger"][1]))
    assert [k.source for k in trust.trusted_keys()] == [str(keys["stranger"][1])]


def test_key_files_inside_a_local_registry_are_refused(tmp_path, keys):
    reg = Registry.init(str(tmp_path / "registry"))
    planted = tmp_path / "registry" / "trusted.pub"
    shutil.copy(keys["stranger"][1], planted)
    with pytest.raises(trust.TrustConfigError, match="must not vouch for itself"):
        trust.trusted_keys([planted], registry_url=reg.url)


def test_bad_key_files_and_policy_values_say_what_to_do(tmp_path, keys):
    bad = tmp_path / "bad.pub"
    bad.write_text("hello\n")
    with pytest.raises(trust.TrustConfigError, match="holds no PEM public key"):
        trust.trusted_keys([bad])
    with pytest.raises(trust.TrustConfigError, match="cannot read"):
        trust.trusted_keys([tmp_path / "missing.pub"])
    with pytest.raises(ValueError, match="not one of off, warn, require"):
        trust.resolve_policy("sometimes")
    with pytest.raises(signing.SigningKeyError, match="not an elliptic-curve private key"):
        reg = Registry.init(str(tmp_path / "r"))
        signing.sign(reg, None, bad)  # refused before the manifest is looked at


def test_every_signature_key_parses_back_to_its_version():
    from hypothesis import given
    from hypothesis import strategies as st

    names = st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,63}\Z")
    versions = st.builds(lambda a, b, c: f"{a}.{b}.{c}", *[st.integers(0, 10**6)] * 3)

    @given(names, versions, st.binary(max_size=64))
    def check(name, version, body):
        parsed = parse_package_key(signature_key(name, version, hashlib.sha256(body).hexdigest()))
        assert (parsed.kind, parsed.name, parsed.stem) == ("signature", name, version)
        assert parse_package_key(manifest_key(name, version)).kind == "manifest"

    check()
