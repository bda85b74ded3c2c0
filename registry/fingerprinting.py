"""Tokenizer fingerprints: a sha256 over what decides the id <-> token mapping, and compatibility.

The fingerprint covers the vocabulary (id -> token, added tokens included), the merges, the model
type and the model parameters that change ids, the normalizer, the pre-tokenizer and the
special-token ids. It ignores everything that does not change ids: truncation, padding, max length,
chat template, the post-processor and decoder, file layout, and whether a GPT-2 style byte-level BPE
tokenizer is stored as `tokenizer.json` or as the slow `vocab.json` + `merges.txt`.
The pad id is recorded in the fingerprint but never decides compatibility: when it is all that
differs, `check_compatible` says "identical" and names it (padding changes no probability).

Every input is first turned into one canonical, JSON-serialisable form (`_Canonical`); each
component is hashed over its canonical JSON, and the digest over the component digests. Nothing is
unpickled or pickled, and neither torch nor transformers is imported: a transformers tokenizer is
duck-typed through `.backend_tokenizer` and its special-token attributes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from memreg.registry.errors import PackageError, TokenizerFileError
from memreg.schemas import TokenizerFingerprint

__all__ = ["Compatibility", "check_compatible", "fingerprint", "load_vocab"]

ALGORITHM = "memreg-tokenizer-v1"
COMPONENTS = ("vocab", "merges", "model", "normalizer", "pre_tokenizer", "special_tokens")
SPECIAL_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
_ADDITIONAL = "additional:"  # key prefix of special tokens without a named role
_LOOKED_FOR = "tokenizer.json, or vocab.json with merges.txt"

# Model parameters that change ids, with the default a missing key means. `dropout` is left out on
# purpose (it only matters in training); empty affixes mean "none" (slow-file converters write "").
_MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "BPE": {
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
    },
    "WordPiece": {"unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100},
    "WordLevel": {"unk_token": None},
    "Unigram": {"unk_id": None, "byte_fallback": False},
}
_EMPTY_IS_NONE = ("continuing_subword_prefix", "end_of_word_suffix", "unk_token")
# What the `tokenizers` library assumes for a ByteLevel pre-tokenizer whose keys are missing.
_BYTE_LEVEL_DEFAULTS = {"add_prefix_space": True, "trim_offsets": True, "use_regex": True}


@dataclass(frozen=True)
class Compatibility:
    """Whether a memory's tokenizer can be used with a base's, decided before any forward pass."""

    verdict: Literal["identical", "resized", "incompatible"]
    reason: str  # one line, fit for an error message
    first_difference: str | None = None  # e.g. "token 8191 is '<|endoftext|>' in the base, '<pad>' in the memory"

    @property
    def ok(self) -> bool:
        return self.verdict != "incompatible"


@dataclass(frozen=True)
class _Canonical:
    """A tokenizer reduced to the parts that decide ids, each JSON-serialisable."""

    vocab: dict[int, str]  # id -> token, added tokens overlaid
    merges: list[list[str]]  # [[left, right], ...] in rank order
    model: dict[str, Any]  # {"type": "BPE", <params that change ids>}
    normalizer: Any
    pre_tokenizer: Any
    special_tokens: dict[str, int]  # role -> id

    def component(self, name: str) -> Any:
        if name == "vocab":
            return [[i, self.vocab[i]] for i in sorted(self.vocab)]
        return getattr(self, name)


# --------------------------------------------------------------------------------------------- API


def fingerprint(tokenizer_or_path: Any) -> TokenizerFingerprint:
    """Fingerprint a tokenizer folder, a `tokenizers.Tokenizer` or a transformers fast tokenizer."""
    return _fingerprint_of(_canonical(tokenizer_or_path))


def load_vocab(tokenizer_or_path: Any) -> dict[int, str]:
    """id -> token, added tokens included (what names the first differing token)."""
    return dict(_canonical(tokenizer_or_path).vocab)


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
    can_a = None if isinstance(a, TokenizerFingerprint) else _canonical(a)
    can_b = None if isinstance(b, TokenizerFingerprint) else _canonical(b)
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


def _fingerprint_of(can: _Canonical) -> TokenizerFingerprint:
    components = {name: _sha256(can.component(name)) for name in COMPONENTS}
    return TokenizerFingerprint(
        algorithm=ALGORITHM,
        digest=_sha256({"algorithm": ALGORITHM, "components": components}),
        vocab_size=len(can.vocab),
        model_type=str(can.model.get("type", "unknown")),
        components=components,
        special_tokens=dict(can.special_tokens),
    )


# ------------------------------------------------------------------------------------ inputs


def _canonical(obj: Any) -> _Canonical:
    if isinstance(obj, (str, Path)):
        try:
            return _from_path(Path(obj))
        except PackageError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
            # a file of the right name but the wrong shape: name it, in one line, never a KeyError
            what = " ".join(str(exc).split())[:80]
            raise TokenizerFileError(f"{_tokenizer_file_of(Path(obj))} is not a tokenizer file as Hugging Face "
                                     f"writes it ({type(exc).__name__}: {what}); re-save it with "
                                     "tokenizer.save_pretrained(folder)") from exc
    backend = getattr(obj, "backend_tokenizer", None)
    if backend is not None:  # a transformers fast tokenizer (duck-typed: never import transformers)
        data = json.loads(backend.to_str())
        return _from_tokenizer_json(data, _roles_of_transformers(obj), additional=())
    if hasattr(obj, "to_str"):  # a tokenizers.Tokenizer: no config, so only added tokens flagged special
        return _from_tokenizer_json(json.loads(obj.to_str()), {}, additional=())
    raise TypeError(
        f"cannot fingerprint {type(obj).__name__}: pass a tokenizer folder, a tokenizers.Tokenizer "
        "or a transformers fast tokenizer"
    )


def _tokenizer_file_of(path: Path) -> Path:
    if path.is_file():
        return path
    return path / "tokenizer.json" if (path / "tokenizer.json").is_file() else path / "vocab.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise TokenizerFileError(f"{path} is not readable JSON ({exc}); fix or remove it") from exc


def _from_path(path: Path) -> _Canonical:
    if path.is_file():  # a tokenizer.json named directly; its folder may hold the configs
        tokenizer_json, folder = path, path.parent
    else:
        tokenizer_json, folder = path / "tokenizer.json", path
    if not folder.is_dir():
        raise TokenizerFileError(f"no tokenizer at {path}: it is not a folder (looked for {_LOOKED_FOR})")
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    special_map = (
        _read_json(folder / "special_tokens_map.json") if (folder / "special_tokens_map.json").is_file() else {}
    )
    if not isinstance(config, dict) or not isinstance(special_map, dict):
        raise TokenizerFileError(f"tokenizer_config.json / special_tokens_map.json in {folder} must hold JSON objects")
    config = {**config, **special_map}  # transformers lets special_tokens_map.json win
    roles, additional = _roles_of_config(config)

    if tokenizer_json.is_file():
        data = _read_json(tokenizer_json)
        if not isinstance(data, dict) or "model" not in data:
            raise TokenizerFileError(f"{tokenizer_json} is not a Hugging Face tokenizer.json (no 'model')")
        pre = data.get("pre_tokenizer")
        if "add_prefix_space" in config and isinstance(pre, dict) and pre.get("type") == "ByteLevel":
            data = {**data, "pre_tokenizer": {**pre, "add_prefix_space": bool(config["add_prefix_space"])}}
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        data = _tokenizer_json_of_slow_files(folder, config)
    else:
        raise TokenizerFileError(f"no tokenizer in {folder}: looked for {_LOOKED_FOR}")

    # Added tokens a slow folder (or an old config) declares outside tokenizer.json.
    extra_added: list[dict[str, Any]] = []
    if (folder / "added_tokens.json").is_file():
        added = _read_json(folder / "added_tokens.json")
        if isinstance(added, dict):
            extra_added += [{"id": int(i), "content": t, "special": False} for t, i in added.items()]
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        for i, tok in decoder.items():
            if isinstance(tok, dict) and "content" in tok:
                extra_added.append({"id": int(i), "content": tok["content"], "special": bool(tok.get("special"))})
    if extra_added:
        data = {**data, "added_tokens": list(data.get("added_tokens") or []) + extra_added}
    return _from_tokenizer_json(data, roles, additional=additional)


def _tokenizer_json_of_slow_files(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """What transformers' GPT-2 converter writes for vocab.json + merges.txt (the parts we hash)."""
    vocab = _read_json(folder / "vocab.json")
    if not isinstance(vocab, dict):
        raise TokenizerFileError(f"{folder / 'vocab.json'} must map tokens to ids")
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    return {
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": bool(config.get("add_prefix_space", False)),
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "vocab": vocab,
            "merges": [line for line in lines if line.strip()],
            # transformers' GPT2Converter sets no unk token (and "" affixes, which mean none).
            "unk_token": None,
        },
    }


def _content(value: Any) -> str | None:
    """A special-token value from a config: a string, or an AddedToken dict with a `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _roles_of_config(config: dict[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
    roles = {role: c for role in SPECIAL_ROLES if (c := _content(config.get(role))) is not None}
    additional: list[str] = []
    for key in ("additional_special_tokens", "extra_special_tokens"):
        value = config.get(key)
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        additional += [c for v in values if (c := _content(v)) is not None]
    return roles, tuple(additional)


def _roles_of_transformers(tok: Any) -> dict[str, str]:
    """Named special tokens of a transformers tokenizer, plus its other special tokens as additional."""
    roles: dict[str, str] = {}
    for role in SPECIAL_ROLES:
        content = getattr(tok, role, None)
        if isinstance(content, str):
            roles[role] = content
    named = set(roles.values())
    for content in getattr(tok, "all_special_tokens", None) or []:
        if isinstance(content, str) and content not in named:
            roles[_ADDITIONAL + content] = content
    return roles


# ------------------------------------------------------------------------------ canonical form


def _from_tokenizer_json(data: dict[str, Any], roles: dict[str, str], *, additional: tuple[str, ...]) -> _Canonical:
    model = data.get("model") or {}
    model_type = model.get("type") or _guess_model_type(model)

    id_to_token: dict[int, str] = {}
    raw_vocab = model.get("vocab") or {}
    scores: list[float] = []
    if model_type == "Unigram":  # [[token, score], ...]; the id is the position, the score decides ids
        for i, (token, score) in enumerate(raw_vocab):
            id_to_token[i] = token
            scores.append(float(score))
    else:
        for token, i in raw_vocab.items():
            id_to_token[int(i)] = token
    special_added: list[str] = []
    for added in sorted(data.get("added_tokens") or [], key=lambda t: int(t["id"])):
        id_to_token[int(added["id"])] = added["content"]
        if added.get("special"):
            special_added.append(added["content"])

    params = {"type": model_type}
    for key, default in _MODEL_PARAMS.get(model_type, {}).items():
        value = model.get(key, default)
        params[key] = None if key in _EMPTY_IS_NONE and value == "" else value
    if model_type not in _MODEL_PARAMS:  # unknown model: keep every parameter but the bulky/irrelevant ones
        params.update({k: v for k, v in model.items() if k not in ("vocab", "merges", "dropout", "type")})
    if scores:
        params["scores"] = scores

    token_to_id: dict[str, int] = {}
    for i in sorted(id_to_token, reverse=True):  # the lowest id wins when a token appears twice
        token_to_id[id_to_token[i]] = i
    special: dict[str, int] = {}
    for role, content in roles.items():
        if content in token_to_id:
            special[role] = token_to_id[content]
    named = set(roles.values())
    for content in (*additional, *special_added):
        if content not in named and content in token_to_id:
            special[_ADDITIONAL + content] = token_to_id[content]

    return _Canonical(
        vocab=id_to_token,
        merges=[_merge_pair(m) for m in model.get("merges") or []],
        model=params,
        normalizer=data.get("normalizer"),
        pre_tokenizer=_canonical_pre_tokenizer(data.get("pre_tokenizer")),
        special_tokens=special,
    )


def _guess_model_type(model: dict[str, Any]) -> str:
    if "merges" in model:
        return "BPE"
    if isinstance(model.get("vocab"), list):
        return "Unigram"
    return "WordPiece" if "max_input_chars_per_word" in model else "WordLevel"


def _merge_pair(merge: Any) -> list[str]:
    """tokenizer.json stores a merge as "a b" (old) or ["a", "b"] (new); both mean the same."""
    if isinstance(merge, str):
        left, sep, right = merge.partition(" ")
        if not sep:
            raise TokenizerFileError(f"merge {merge!r} is not two tokens separated by a space")
        return [left, right]
    left, right = merge
    return [str(left), str(right)]


def _canonical_pre_tokenizer(pre: Any) -> Any:
    """Fill the defaults `tokenizers` assumes, so older files that omit keys hash the same."""
    if not isinstance(pre, dict):
        return pre
    if pre.get("type") == "ByteLevel":
        return {**_BYTE_LEVEL_DEFAULTS, **pre}
    if pre.get("type") == "Sequence" and isinstance(pre.get("pretokenizers"), list):
        return {**pre, "pretokenizers": [_canonical_pre_tokenizer(p) for p in pre["pretokenizers"]]}
    return pre


# ------------------------------------------------------------------------------ differences


def _first_difference(a: _Canonical, b: _Canonical, name_a: str, name_b: str) -> str | None:
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
