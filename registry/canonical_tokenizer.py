"""A tokenizer reduced to what decides its ids (`Canonical`): what registry/fingerprinting.py hashes.

A tokenizer folder (tokenizer.json, or the slow vocab.json + merges.txt of a GPT-2 style byte-level
BPE, with the config files beside them), a `tokenizers.Tokenizer` or a transformers fast tokenizer
all become one `Canonical`, each part JSON-serialisable, with the defaults the `tokenizers` library
assumes filled in: the same tokenizer stored two ways must hash the same. Reading files is kept
apart from hashing and comparing because it is where the formats of other libraries are handled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memreg.core.errors import PackageError, TokenizerFileError

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
class Canonical:
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


# ------------------------------------------------------------------------------------ inputs


def canonical(obj: Any) -> Canonical:
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


def _from_path(path: Path) -> Canonical:
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


def _from_tokenizer_json(data: dict[str, Any], roles: dict[str, str], *, additional: tuple[str, ...]) -> Canonical:
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

    return Canonical(
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
