"""Signed memories: `memreg sign`, and what publish, pull, verify and attach need for signatures
(--sign-key, --public-key, --trust). Thin: memreg.registry.signing and .trust do the work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from memreg.cli.options import JsonOpt, RegistryOpt, StorageOpt, storage_options
from memreg.cli.output import console, print_json, styled, warn

SignKeyOpt = Annotated[Optional[Path], typer.Option(
    "--sign-key", metavar="PATH",
    help="Elliptic-curve private key (PEM) to sign with, in the OpenSSF model-signing format; an encrypted "
         "key's password comes from $MEMREG_SIGN_KEY_PASSWORD.")]
PublicKeyOpt = Annotated[Optional[list[Path]], typer.Option(
    "--public-key", metavar="PATH",
    help="A PEM file of public keys you trust, repeatable (also $MEMREG_PUBLIC_KEYS and the trust file "
         "$MEMREG_TRUST_FILE, default ~/.config/memreg/trusted-keys.pem; never a file inside the registry).")]


def _policy(value: Optional[str]) -> str:
    from memreg.core.errors import InvalidArgumentError
    from memreg.registry.trust import resolve_policy

    try:
        return resolve_policy(value)
    except InvalidArgumentError as e:
        raise typer.BadParameter(str(e), param_hint="--trust") from None


TrustOpt = Annotated[Optional[str], typer.Option(
    "--trust", envvar="MEMREG_TRUST", show_envvar=True, callback=_policy, metavar="off|warn|require",
    help="What to do with a memory no trusted key signed: off, warn (used with a warning; silent when no key "
         "is trusted), require (refused before any byte is pulled).")]


def _open(registry: str | None, options: list[str] | None):
    from memreg.registry import Registry

    return Registry.open(registry, storage_options=storage_options(options))


def check_trust(reg, manifest, policy: str, public_keys: list[Path] | None) -> None:
    """The policy, applied to one version before it is pulled (refused: UntrustedMemoryError)."""
    from memreg.registry import trust

    if policy != "off":
        trust.enforce(reg, manifest, policy=policy, keys=trust.trusted_keys(public_keys or [], registry_url=reg.url),
                      warn=warn)


def check_key(key: Path) -> None:
    """Refuse an unusable private key before anything is published."""
    from memreg.registry import signing

    signing.load_signer(key, signing.password_from_env())


def sign_version(reg, manifest, key: Path) -> str:
    """Sign and say so: the signer's key fingerprint."""
    from memreg.registry import signing

    record = signing.sign(reg, manifest, key, password=signing.password_from_env())
    return record.key_fingerprint


def sign(
    ref: Annotated[str, typer.Argument(help="The version to sign: name@1.2.0, name or name:tag.")],
    sign_key: SignKeyOpt = None,
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Sign a published version (a version can carry several signatures: publisher, reviewer, ...).
    The manifest is not changed: the signature is stored beside it."""
    from memreg.registry import signing

    if sign_key is None:
        raise typer.BadParameter("a private key is needed: --sign-key PATH", param_hint="--sign-key")
    reg = _open(registry, storage_option)
    m = reg.resolve(ref)
    fingerprint = sign_version(reg, m, sign_key)
    count = len(signing.records(reg, m))
    if json_:
        print_json({"ref": m.ref, "key_fingerprint": fingerprint, "signatures": count})
    else:
        console.print(f"signed {m.ref} with key {fingerprint[:16]}… ({count} signature{'s' * (count != 1)})")


SignedByOpt = Annotated[Optional[Path], typer.Option(
    "--signed-by", metavar="PUBLIC_KEY", help="Only versions this key (a PEM public key file) signed, checked with it.")]


def signed_rows(reg, rows: list, key_file: Path) -> list:
    """`memreg list --signed-by`: the rows whose version the key's signature holds for (each row
    costs its manifest and its signatures: only with the option)."""
    from memreg.registry import signing, trust

    keys = trust.trusted_keys([key_file], registry_url=reg.url)
    return [r for r in rows if signing.check(reg, reg.manifest(r.manifest.name, r.manifest.version), keys).ok]


def signatures_shown(reg, m) -> list[dict]:
    """`memreg show`: each signature of the version, who made it (the key's fingerprint, as the
    signer said) and when, and whether a key you trust verifies it."""
    from memreg.registry import signing, trust
    from memreg.registry.layout import stem

    try:
        keys = trust.trusted_keys(registry_url=reg.url)
    except trust.TrustConfigError as e:
        warn(str(e))
        keys = []
    rows = []
    for key, record, why in signing.records(reg, m):
        digest = stem(key)
        if record is None:
            rows.append({"signature": digest, "key_fingerprint": None, "signed_at": None, "verified": False,
                         "note": f"signature {why}"})
            continue
        problem = signing.record_problem(m, record, keys)
        rows.append({"signature": digest, "key_fingerprint": record.key_fingerprint,
                     "signed_at": record.signed_at.isoformat(), "verified": not problem,
                     "note": "verified with a key you trust" if not problem else f"signature {problem}"})
    return rows


def verify_signatures(reg, ref: str | None, public_keys: list[Path], save_signatures: Path | None, json_: bool) -> None:
    """`memreg verify REF --public-key PATH`: the version's blobs re-hashed, its signatures checked
    against the manifest, then model-signing's own check of every file of the pulled folder. Exit 1
    on any problem, or unless a trusted key signed it."""
    from memreg.registry import signing, trust

    if ref is None:
        raise typer.BadParameter("--public-key checks one version: memreg verify NAME@VERSION --public-key PATH",
                                 param_hint="--public-key")
    m = reg.resolve(ref)
    keys = trust.trusted_keys(public_keys, registry_url=reg.url)
    report = reg.verify(m.ref)
    check = signing.check(reg, m, keys)
    problems = report.problems + ([] if check.ok else [f"{m.ref}: {p}" for p in check.problems])
    if report.ok and check.ok:
        problems += _check_pulled(reg, m, keys, check.signers, save_signatures)
    ok = not problems
    if json_:
        error = None if ok else {"type": "VerifyFailed", "exit_code": 1, "message": f"{len(problems)} problems: {problems[0]}"}
        print_json({"versions": [m.ref], "blobs": report.checked_blobs, "problems": problems, "indexes_rebuilt": [],
                    "signed_by": check.signers}, ok=ok, error=error)
    else:
        for p in problems:
            console.print(styled("FAIL", "red"), p)
        signers = ", ".join(f"{fp[:16]}…" for fp in check.signers) or "no key you trust"
        console.print(f"{'ok' if ok else 'FAILED'}: {m.ref} signed by {signers}; "
                      f"{report.checked_blobs} blobs checked, {len(problems)} problems")
    if not ok:
        raise typer.Exit(1)


def _check_pulled(reg, m, keys, signers: list[str], save_signatures: Path | None) -> list[str]:
    """model-signing re-hashes the pulled folder against each trusted signature; with
    save_signatures, each is also written there as <digest>.sig for `model_signing verify key`."""
    from memreg.registry import signing
    from memreg.registry.layout import stem

    folder, by_fp, problems = reg.pull(m), {k.fingerprint: k for k in keys}, []
    for key, record, _ in signing.records(reg, m):
        if record is None or record.key_fingerprint not in signers:
            continue
        try:
            signing.verify_folder(folder, record, by_fp[record.key_fingerprint])
        except ValueError as e:
            problems.append(f"{folder}: {str(e).splitlines()[0]}")
        if save_signatures is not None:
            save_signatures.mkdir(parents=True, exist_ok=True)
            signing.export(record, save_signatures / f"{stem(key)}.sig")
    return problems
