"""`packages/<name>/signatures/<version>/<sha256>.json`: one signature of one version (format 1).

The signature itself is an OpenSSF model-signing bundle (a Sigstore bundle whose DSSE envelope
carries an in-toto statement listing every file of the pulled package folder with its sha256,
memreg.json included), kept here as the JSON `model_signing` writes. The document is named after
the sha256 of its own bytes and created once: a version gains signatures without its immutable
manifest changing, and manifests published before signing existed stay as they were.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from memreg.schemas.v1 import NAME_PATTERN, SEMVER_PATTERN, _check_format, _Strict

SIGNATURE_FORMAT_VERSION = 1


class SignatureRecord(_Strict):
    """Who signed a version and the signature. `key_fingerprint` and `signed_at` are what the
    signer said: only `bundle` is checked (with a key the reader trusts)."""

    format_version: Literal[1] = SIGNATURE_FORMAT_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=SEMVER_PATTERN)
    method: Literal["key"] = Field("key", description="model-signing's elliptic-curve key method")
    key_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$",
                                 description="sha256 of the signer's PEM public key (the bundle's key hint)")
    signed_at: datetime
    bundle: dict[str, Any] = Field(description="the Sigstore bundle as model_signing writes it (a .sig file)")

    _check = model_validator(mode="before")(_check_format)
