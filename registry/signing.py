"""Signatures of published versions, in the OpenSSF model-signing format (sigstore/model-transparency),
made and checked by its reference library `model-signing` (the `sign` extra), never by a scheme of ours.

What is signed is the package folder as `pull` lays it out: every file of the manifest with its
sha256, and memreg.json (the manifest itself: name, version, training provenance, metrics), so a
signature vouches for how the memory was made and cannot be moved to another version. The statement
is built from the digests the manifest already holds (no byte is read again to sign); `pull` proves
the files have those digests, and `model_signing verify key` accepts the pulled folder as it is.

Each signature is a document packages/<name>/signatures/<version>/<sha256 of its bytes>.json
(schemas/signature.py), created once: several per version (publisher, reviewer), the immutable
manifest untouched, and no blob for gc to keep. Checking needs only the manifest and the signature
documents, so a policy refuses a memory before any of its weights is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from memreg.registry.cache import RECORD
from memreg.core.errors import SigningKeyError, SigningUnavailableError, first_validation_error
from memreg.registry.layout import signature_key, signatures_prefix, stem
from memreg.registry.package import CARD
from memreg.schemas import Manifest
from memreg.schemas.signature import SignatureRecord

if TYPE_CHECKING:
    from memreg.registry.api import Registry
    from memreg.registry.trust import TrustedKey

# What `model_signing verify` must skip in a pulled folder: the cache's own record of it, and the
# paths the library's CLI itself skips when it signs.
IGNORED = [RECORD, ".git", ".gitattributes", ".github", ".gitignore"]


@dataclass(frozen=True)
class SignatureCheck:
    """The signatures of one version against the keys a reader trusts: `signers` are the
    fingerprints of trusted keys whose signature holds; `problems`, one line per signature that
    does not (or "no signature")."""

    ref: str
    signers: list[str]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return bool(self.signers)


def card_bytes(manifest: Manifest) -> bytes:
    """memreg.json as Cache.assemble writes it into a pulled folder."""
    return manifest.model_dump_json(indent=2).encode()


def signed_files(manifest: Manifest) -> dict[str, str]:
    """path -> sha256 hex of every file of the pulled folder that a signature covers."""
    files = {e.path: e.hex for e in manifest.model.files}
    files[CARD] = hashlib.sha256(card_bytes(manifest)).hexdigest()
    return files


def key_fingerprint(public_pem: bytes) -> str:
    """The key hint model-signing writes into a bundle: sha256 of the PEM SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization as ser

    key = ser.load_pem_public_key(public_pem)
    return hashlib.sha256(key.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def sign(reg: Registry, manifest: Manifest, private_key: Path, *, password: str | None = None) -> SignatureRecord:
    """Sign a published version with an elliptic-curve private key (PEM) and store the signature.
    Signing the same version with the same key again adds another signature (a new time)."""
    ms_manifest, signing_mod, _ = _library()
    signer = load_signer(private_key, password)
    items = [ms_manifest.FileManifestItem(path=PurePosixPath(p), digest=_digest(h))
             for p, h in signed_files(manifest).items()]
    serialization = ms_manifest.SerializationType.from_args(
        {"method": "files", "hash_type": "sha256", "allow_symlinks": False, "ignore_paths": IGNORED})
    signature = signer.sign(signing_mod.Payload(ms_manifest.Manifest(manifest.name, items, serialization)))
    with tempfile.TemporaryDirectory(prefix="memreg-sign-") as tmp:
        path = Path(tmp) / "model.sig"
        signature.write(path)
        bundle = json.loads(path.read_text())
    record = SignatureRecord(name=manifest.name, version=manifest.version,
                             key_fingerprint=bundle["verificationMaterial"]["publicKey"]["hint"],
                             signed_at=datetime.now(timezone.utc), bundle=bundle)
    raw = record.model_dump_json(indent=2).encode()
    try:
        reg.store.create(signature_key(manifest.name, manifest.version, hashlib.sha256(raw).hexdigest()), raw)
    except FileExistsError:
        pass  # the very same document: content-addressed
    return record


def load_signer(private_key: Path, password: str | None):
    """model-signing's signer for an elliptic-curve private key, or one line saying what to do."""
    _, _, ec_key = _library()
    try:
        return ec_key.Signer(Path(private_key), password.encode() if password else None)
    except (OSError, ValueError, TypeError) as e:
        raise SigningKeyError(f"{private_key} is not an elliptic-curve private key in PEM (P-256/384/521) that "
                              f"memreg can read ({_first_line(e)}): make one with `openssl ecparam -genkey "
                              "-name prime256v1 -noout | openssl pkcs8 -topk8 -nocrypt -out key.pem`") from None


def records(reg: Registry, manifest: Manifest) -> list[tuple[str, SignatureRecord | None, str]]:
    """Every signature document of a version: (key, the record or None, why it is None)."""
    keys = [k for k in reg.store.list(signatures_prefix(manifest.name, manifest.version)) if k.endswith(".json")]
    out = []
    for key, raw in reg.store.read_many(keys).items():
        if raw is None:
            continue  # vanished since the listing
        out.append((key, *_parse(key, raw)))
    return sorted(out, key=lambda t: t[0])


def _parse(key: str, raw: bytes) -> tuple[SignatureRecord | None, str]:
    name = stem(key)
    if hashlib.sha256(raw).hexdigest() != name:
        return None, "was altered after it was stored (its bytes do not hash to its name)"
    try:
        return SignatureRecord.model_validate_json(raw), ""
    except ValueError as e:
        return None, f"is not a valid signature document ({first_validation_error(e)})"


def check(reg: Registry, manifest: Manifest, keys: list[TrustedKey]) -> SignatureCheck:
    """Which trusted keys signed exactly this version (its files and its manifest)."""
    signers, problems = [], []
    found = records(reg, manifest)
    if not found:
        return SignatureCheck(manifest.ref, [], ["it carries no signature"])
    for key, record, why in found:
        where = f"signature {stem(key)[:12]}"
        problem = why or record_problem(manifest, record, keys)
        if problem:
            problems.append(f"{where} {problem}")
        elif record.key_fingerprint not in signers:
            signers.append(record.key_fingerprint)
    return SignatureCheck(manifest.ref, signers, problems)


def record_problem(manifest: Manifest, record: SignatureRecord, keys: list[TrustedKey]) -> str:
    """Why this signature does not vouch for this version with one of these keys ("" when it does)."""
    if (record.name, record.version) != (manifest.name, manifest.version):
        return f"was made for {record.name}@{record.version}, not {manifest.ref}"
    key = next((k for k in keys if k.fingerprint == record.key_fingerprint), None)
    if key is None:
        return f"is by key {record.key_fingerprint[:16]}…, which you do not trust"
    try:
        signed = _verified_statement(record, key)
    except Exception as e:  # noqa: BLE001 - the library raises ValueError, protobuf and crypto errors alike
        return f"does not verify with key {key.fingerprint[:16]}… ({_first_line(e)})"
    return _files_problem(signed, signed_files(manifest))


def _verified_statement(record: SignatureRecord, key: TrustedKey) -> dict[str, str]:
    """path -> sha256 hex listed by the signed statement, once model-signing has checked the
    signature with the key."""
    _, _, ec_key = _library()
    from model_signing._signing import sign_sigstore_pb

    with tempfile.TemporaryDirectory(prefix="memreg-verify-") as tmp:
        sig, pub = Path(tmp) / "model.sig", Path(tmp) / "key.pub"
        sig.write_text(json.dumps(record.bundle))
        pub.write_bytes(key.pem)
        signed = ec_key.Verifier(pub).verify(sign_sigstore_pb.Signature.read(sig))
    if signed.serialization_type.get("method") != "files":
        raise ValueError(f"serialization {signed.serialization_type.get('method')!r}, memreg signs by files")
    return {rd.identifier: rd.digest.digest_hex for rd in signed.resource_descriptors()}


def _files_problem(signed: dict[str, str], actual: dict[str, str]) -> str:
    extra = sorted(set(signed) - set(actual))
    missing = sorted(set(actual) - set(signed))
    changed = sorted(p for p in set(signed) & set(actual) if signed[p] != actual[p])
    if not (extra or missing or changed):
        return ""
    parts = [f"{what}: {', '.join(paths[:3])}" for what, paths in
             (("changed", changed), ("not in the package", extra), ("not signed", missing)) if paths]
    return "covers other files than the version holds (" + "; ".join(parts) + ")"


def export(record: SignatureRecord, path: Path) -> Path:
    """Write the bundle as a .sig file that `model_signing verify key` reads."""
    path.write_text(json.dumps(record.bundle, indent=2))
    return path


def verify_folder(folder: Path, record: SignatureRecord, key: TrustedKey) -> None:
    """model-signing's own check of a pulled folder: every file re-hashed and compared with the
    signed statement (ValueError naming the file that differs)."""
    from model_signing import verifying

    with tempfile.TemporaryDirectory(prefix="memreg-verify-") as tmp:
        pub = Path(tmp) / "key.pub"
        pub.write_bytes(key.pem)
        verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(folder, export(record, Path(tmp) / "model.sig"))


def _digest(hexdigest: str):
    from model_signing._hashing.hashing import Digest

    return Digest("sha256", bytes.fromhex(hexdigest))


def _library():
    """model-signing's manifest, payload and key modules (1.1: the key signer has no public
    constructor that works without a folder to hash)."""
    try:
        from model_signing import manifest as ms_manifest
        from model_signing._signing import sign_ec_key
        from model_signing._signing import signing as signing_mod
    except ImportError as e:
        raise SigningUnavailableError(f"signing needs model-signing ({e.name} is missing): "
                                      "pip install 'memreg[sign]'") from None
    return ms_manifest, signing_mod, sign_ec_key


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def password_from_env() -> str | None:
    """$MEMREG_SIGN_KEY_PASSWORD for an encrypted private key (never an option: shells keep history)."""
    return os.environ.get("MEMREG_SIGN_KEY_PASSWORD") or None
