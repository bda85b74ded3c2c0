"""Which signing keys a reader trusts, and what happens to a memory none of them signed.

The keys come from the reader's side only, never from the registry (a registry that could name its
own keys would vouch for itself): `--public-key` options, $MEMREG_PUBLIC_KEYS (paths separated
like PATH), and the trust file ($MEMREG_TRUST_FILE, default ~/.config/memreg/trusted-keys.pem), each
a PEM file holding one or more public keys. The policy (`--trust`, $MEMREG_TRUST, default warn):

    off      no check
    warn     a memory no trusted key signed is used, with one warning line saying why
    require  such a memory is refused (UntrustedMemoryError), before any of its bytes is pulled

Under warn with no trusted key configured there is nothing to check against, and nothing is said:
a user who has not opted into signing is not warned on every pull.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from memreg.core.errors import InvalidArgumentError, TrustConfigError, UntrustedMemoryError

if TYPE_CHECKING:
    from memreg.registry.api import Registry
    from memreg.registry.signing import SignatureCheck
    from memreg.schemas import Manifest

POLICIES = ("off", "warn", "require")
_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


@dataclass(frozen=True)
class TrustedKey:
    fingerprint: str  # sha256 of the PEM public key, as model-signing's bundle hint
    pem: bytes
    source: str  # the file it came from


def resolve_policy(value: str | None) -> str:
    """The option, else $MEMREG_TRUST, else warn."""
    chosen = (value or os.environ.get("MEMREG_TRUST") or "warn").strip().lower()
    if chosen not in POLICIES:
        raise InvalidArgumentError(f"trust policy {chosen!r} is not one of off, warn, require (--trust or $MEMREG_TRUST)")
    return chosen


def trust_file() -> Path:
    env = os.environ.get("MEMREG_TRUST_FILE")
    if env:
        return Path(env).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "memreg" / "trusted-keys.pem"


def trusted_keys(paths: Iterable[str | Path] = (), *, registry_url: str | None = None) -> list[TrustedKey]:
    """Every public key of the options, $MEMREG_PUBLIC_KEYS and the trust file. A file named
    explicitly must exist; the default trust file only counts when it does. A key file inside the
    registry's own folder is refused."""
    named = [Path(p).expanduser() for p in paths]
    named += [Path(p).expanduser() for p in os.environ.get("MEMREG_PUBLIC_KEYS", "").split(os.pathsep) if p]
    if os.environ.get("MEMREG_TRUST_FILE") or trust_file().is_file():
        named.append(trust_file())
    keys: dict[str, TrustedKey] = {}
    for path in named:
        _outside_registry(path, registry_url)
        for key in _read_keys(path):
            keys.setdefault(key.fingerprint, key)
    return list(keys.values())


def _outside_registry(path: Path, registry_url: str | None) -> None:
    if not registry_url or "://" in registry_url and not registry_url.startswith("file://"):
        return  # a remote registry cannot hold a local file
    root = Path(registry_url.removeprefix("file://")).expanduser().resolve()
    if path.resolve().is_relative_to(root):
        raise TrustConfigError(f"{path} lies inside the registry {registry_url}: a registry must not vouch for itself; "
                               "keep trusted keys elsewhere (e.g. ~/.config/memreg/trusted-keys.pem)")


def _read_keys(path: Path) -> list[TrustedKey]:
    from memreg.registry.signing import key_fingerprint

    try:
        blocks = _PEM.findall(path.read_bytes())
    except OSError as e:
        raise TrustConfigError(f"cannot read public key file {path}: {e.strerror or e}") from None
    if not blocks:
        raise TrustConfigError(f"{path} holds no PEM public key (-----BEGIN PUBLIC KEY-----): export one with "
                               "`openssl ec -in key.pem -pubout -out key.pub`")
    out = []
    for pem in blocks:
        try:
            out.append(TrustedKey(key_fingerprint(pem + b"\n"), pem + b"\n", str(path)))
        except ValueError as e:
            raise TrustConfigError(f"{path} holds a public key memreg cannot read: {e}") from None
    return out


def enforce(reg: Registry, manifest: Manifest, *, policy: str, keys: list[TrustedKey],
            warn: Callable[[str], None]) -> SignatureCheck | None:
    """Apply the policy to one version before it is pulled: None when nothing was checked."""
    from memreg.registry import signing

    if policy == "off":
        return None
    if not keys:
        if policy == "require":
            raise TrustConfigError(f"--trust require needs a key you trust: --public-key PATH, $MEMREG_PUBLIC_KEYS, "
                                   f"or the trust file {trust_file()}")
        return None
    result = signing.check(reg, manifest, keys)
    if result.ok:
        return result
    line = f"{manifest.ref} is not signed by a key you trust: " + "; ".join(result.problems)
    if policy == "require":
        raise UntrustedMemoryError(f"{line} (refused: trust policy require)")
    warn(f"{line} (used anyway: trust policy warn)")
    return result


def enforce_refs(reg: Registry | None, refs: list[str], *, policy: str | None, public_keys: Iterable[str | Path],
                 warn: Callable[[str], None]) -> None:
    """The policy for each registry reference a composition uses (compose, attach, eval), before
    any of them is pulled. `policy` None: $MEMREG_TRUST, else warn."""
    chosen = resolve_policy(policy)
    if reg is None or not refs or chosen == "off":
        return
    keys = trusted_keys(public_keys, registry_url=reg.url)
    for ref in refs:
        enforce(reg, reg.resolve(ref), policy=chosen, keys=keys, warn=warn)
