"""Tokenizer fingerprints: a sha256 over what decides the id <-> token mapping, and compatibility.

The fingerprint covers the vocabulary (id -> token, added tokens included), the merges, the model
type and the model parameters that change ids, the normalizer, the pre-tokenizer and the
special-token ids. It ignores everything that does not change ids: truncation, padding, max length,
chat template, the post-processor and decoder, file layout, and whether a GPT-2 style byte-level BPE
tokenizer is stored as `tokenizer.json` or as the slow `vocab.json` + `merges.txt`.
The pad id is recorded in the fingerprint but never decides compatibility: when it is all that
differs, `check_compatible` says "identical" and names it (padding changes no probability).

Every input is first turned into one canonical, JSON-serialisable form (`Canonical`, read by
registry/canonical_tokenizer.py); each component is hashed over its canonical JSON, and the digest
over the component digests. Nothing is unpickled or pickled, and neither torch nor transformers is
imported: a transformers tokenizer is duck-typed through `.backend_tokenizer` and its special-token
attributes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from memreg.registry.canonical_tokenizer import SPECIAL_ROLES, Canonical, canonical
from memreg.schemas import TokenizerFingerprint

__all__ = ["Compatibility", "check_compatible", "fingerprint", "load_vocab"]

ALGORITHM = "memreg-tokenizer-v1"
COMPONENTS = ("vocab", "merges", "model", "normalizer", "pre_tokenizer", "special_tokens")


@dataclass(frozen=True)
class Compatibility:
    """Whether a memory's tokenizer can be used with a base's, decided before any forward pass."""

    verdict: Literal["identical", "resized", "incompatible"]
    reason: str  # one line, fit for an error message
    first_difference: str | None = None  # e.g. "token 8191 is '<|endoftext|>' in the base, '<pad>' in the memory"

    @property
    def ok(self) -> bool:
        return self.verdict != "incompatible"


# --------------------------------------------------------------------------------------------- API


def fingerprint(tokenizer_or_path: Any) -> TokenizerFingerprint:
    """Fingerprint a tokenizer folder, a `tokenizers.Tokenizer` or a transformers fast tokenizer."""
    return _fingerprint_of(canonical(tokenizer_or_path))


def load_vocab(tokenizer_or_path: Any) -> dict[int, str]:
    """id -> token, added tokens included (what names the first differing token)."""
    return dict(canonical(tokenizer_or_path).vocab)


def check_compatible(
    a: Any,
    b: Any,
    *,
    rows_a: int | None = None,
    rows_b: int | None = None,
    name_a: str = "the base",
    name_b: str = "the memory",
) -> Compatibility:
    """Decide whether `b` (the memory) may be used with `a` (the base).

    `a` and `b` are fingerprints, tokenizer folders or tokenizer objects; `rows_*` are the numbers
    of output-embedding rows, when known. Equal fingerprints with different row counts are
    "resized": still compatible, the caller slices logits to `len(tokenizer)`.
    """
    can_a = None if isinstance(a, TokenizerFingerprint) else canonical(a)
    can_b = None if isinstance(b, TokenizerFingerprint) else canonical(b)
    fp_a = a if can_a is None else _fingerprint_of(can_a)
    fp_b = b if can_b is None else _fingerprint_of(can_b)

    pad_note = pad_only_difference(fp_a, fp_b, name_a, name_b)
    if fp_a.digest != fp_b.digest and pad_note is None:
        diff = None
        if can_a is not None and can_b is not None:
            diff = _first_difference(can_a, can_b, name_a, name_b)
        if diff is None:
            diff = _first_difference_of_fingerprints(fp_a, fp_b, name_a, name_b)
        return Compatibility(
            "incompatible",
            f"{name_b} was built for a different tokenizer than {name_a}: {diff}",
            diff,
        )

    for rows, name in ((rows_a, name_a), (rows_b, name_b)):
        if rows is not None and rows < fp_a.vocab_size:
            diff = f"{name} has {rows} embedding rows but its tokenizer has {fp_a.vocab_size} tokens"
            return Compatibility("incompatible", f"{diff}: ids past row {rows - 1} have no logit", diff)

    short = fp_a.digest[: len("sha256:") + 12]
    if rows_a is not None and rows_b is not None and rows_a != rows_b:
        return Compatibility(
            "resized",
            f"same tokenizer ({short}); {name_a} has {rows_a} embedding rows, {name_b} {rows_b}: "
            f"logits are sliced to {fp_a.vocab_size} tokens" + (f"; {pad_note}" if pad_note else ""),
        )
    return Compatibility("identical", f"same tokenizer ({short})" + (f"; {pad_note}" if pad_note else ""))


def pad_only_difference(a: TokenizerFingerprint, b: TokenizerFingerprint, name_a: str, name_b: str) -> str | None:
    """"pad_token is id 0 in A, not set in B" when the pad id is all that differs, else None.

    The pad id stays in the fingerprint (it is recorded), but padded positions are masked out and
    score nothing, so it never decides compatibility: `tokenizer.pad_token = tokenizer.eos_token`,
    as nearly every fine-tuning script does, must not make a tokenizer incompatible with itself.
    """
    if a.digest == b.digest or a.algorithm != b.algorithm or a.vocab_size != b.vocab_size:
        return None
    others = [n for n in COMPONENTS if n != "special_tokens"]
    if any(a.components.get(n) != b.components.get(n) for n in others):
        return None
    strip = lambda d: {k: v for k, v in d.items() if k != "pad_token"}  # noqa: E731
    if strip(a.special_tokens) != strip(b.special_tokens):
        return None
    return "only the pad token differs (" + (_special_difference(a.special_tokens, b.special_tokens, name_a, name_b)
                                             or "pad_token") + "), which changes no probability"


# ------------------------------------------------------------------------------------ hashing


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _sha256(obj: Any) -> str:
    return "sha256:" + hashlib.sha256(_canonical_json(obj)).hexdigest()


def _fingerprint_of(can: Canonical) -> TokenizerFingerprint:
    components = {name: _sha256(can.component(name)) for name in COMPONENTS}
    return TokenizerFingerprint(
        algorithm=ALGORITHM,
        digest=_sha256({"algorithm": ALGORITHM, "components": components}),
        vocab_size=len(can.vocab),
        model_type=str(can.model.get("type", "unknown")),
        components=components,
        special_tokens=dict(can.special_tokens),
    )

# ------------------------------------------------------------------------------ differences


def _first_difference(a: Canonical, b: Canonical, name_a: str, name_b: str) -> str | None:
    """One concrete sentence naming the first thing that differs, vocabulary first."""
    for i in sorted(a.vocab.keys() | b.vocab.keys()):
        ta, tb = a.vocab.get(i), b.vocab.get(i)
        if ta != tb:
            in_a = repr(ta) if ta is not None else "missing"
            in_b = repr(tb) if tb is not None else "missing"
            return f"token {i} is {in_a} in {name_a}, {in_b} in {name_b}"
    special = _special_difference(a.special_tokens, b.special_tokens, name_a, name_b)
    if special:
        return special
    for k in range(max(len(a.merges), len(b.merges))):
        ma = " ".join(a.merges[k]) if k < len(a.merges) else None
        mb = " ".join(b.merges[k]) if k < len(b.merges) else None
        if ma != mb:
            in_a = repr(ma) if ma is not None else "missing"
            in_b = repr(mb) if mb is not None else "missing"
            return f"merge {k} is {in_a} in {name_a}, {in_b} in {name_b}"
    for key in sorted(a.model.keys() | b.model.keys()):
        if a.model.get(key) != b.model.get(key) and key != "scores":
            return f"the model's {key} is {a.model.get(key)!r} in {name_a}, {b.model.get(key)!r} in {name_b}"
    for name in COMPONENTS:
        if _canonical_json(a.component(name)) != _canonical_json(b.component(name)):
            return f"the {name} differs"
    return None


def _special_difference(a: dict[str, int], b: dict[str, int], name_a: str, name_b: str) -> str | None:
    order = {role: k for k, role in enumerate(SPECIAL_ROLES)}
    for role in sorted(a.keys() | b.keys(), key=lambda r: (order.get(r, len(order)), r)):
        if a.get(role) != b.get(role):
            in_a = f"id {a[role]}" if role in a else "not set"
            in_b = f"id {b[role]}" if role in b else "not set"
            return f"{role} is {in_a} in {name_a}, {in_b} in {name_b}"
    return None


def _first_difference_of_fingerprints(
    a: TokenizerFingerprint, b: TokenizerFingerprint, name_a: str, name_b: str
) -> str:
    if a.algorithm != b.algorithm:
        return f"the fingerprints use different algorithms ({a.algorithm} in {name_a}, {b.algorithm} in {name_b})"
    if a.vocab_size != b.vocab_size:
        return f"the tokenizer has {a.vocab_size} tokens in {name_a}, {b.vocab_size} in {name_b}"
    special = _special_difference(a.special_tokens, b.special_tokens, name_a, name_b)
    if special:
        return special
    for name in COMPONENTS:
        if a.components.get(name) != b.components.get(name):
            return f"the {name} differs"
    return "the tokenizer fingerprints differ"
