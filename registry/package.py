"""A package folder on local disk: what may be in it, and what the manifest says about it.

A package is a standard Hugging Face model folder (config.json, *.safetensors, tokenizer files)
plus an optional memreg.json card. Everything is checked before anything is uploaded.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from memreg.core.errors import PackageError, SafetensorsError, WeightsMismatchError, first_validation_error
from memreg.schemas import FileEntry, ModelInfo, PackageCard

CARD = "memreg.json"  # the card / manifest inside a package folder; the one place this name is written
# Formats that unpickle (or may) when loaded: a registry must never make anybody run them.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}
CODE_SUFFIXES = {".py", ".pyc", ".so"}  # remote code is never run (trust_remote_code stays off)
TOKENIZER_FILES = ("tokenizer.json", ("vocab.json", "merges.txt"))
# Paths become file names in the cache, under $MEMREG_HOME/cache/packages/<name>/<version>-<digest>/:
# bounded so that the whole path stays far below PATH_MAX and each part below NAME_MAX (255 bytes).
MAX_PATH_LENGTH = 512
MAX_PART_LENGTH = 128
_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


@dataclass(frozen=True)
class LocalFile:
    path: str  # relative POSIX path inside the package
    local: Path
    size: int


def scan_folder(folder: Path) -> list[LocalFile]:
    """Every file to publish, after refusing symlinks, pickles and code. memreg.json is not a file
    of the package: it becomes the manifest."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PackageError(f"{folder} is not a folder: publish a Hugging Face model folder (config.json, *.safetensors, tokenizer files)")
    files: list[LocalFile] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        d = Path(dirpath)
        for name in sorted(dirnames):
            if (d / name).is_symlink():
                raise PackageError(f"{d / name} is a symbolic link: copy the real folder into the package instead")
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in sorted(filenames):
            p = d / name
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink():
                raise PackageError(f"{p} is a symbolic link: packages hold real files only; copy the target in")
            if name.startswith(".") or rel == CARD:
                continue
            suffix = p.suffix.lower()
            if suffix in PICKLE_SUFFIXES:
                raise PackageError(f"{rel}: {suffix} files may hold pickles, which memreg refuses; save weights with safetensors (save_pretrained(..., safe_serialization=True)) and remove {rel}")
            if suffix in CODE_SUFFIXES:
                raise PackageError(f"{rel}: packages may not carry code (remote code is never run); remove it")
            if not p.is_file():
                raise PackageError(f"{p} is not a regular file")
            if problem := path_problem(rel):
                raise PackageError(f"{rel}: {problem}; rename it")
            files.append(LocalFile(rel, p, p.stat().st_size))
    if problem := files_problem([f.path for f in files]):
        raise PackageError(f"{folder}: {problem}; rename one")
    names = {f.path for f in files}
    if "config.json" not in names and "adapter_config.json" in names:
        raise PackageError(f"{folder} is a PEFT adapter, which memreg attaches as it is (memreg attach BASE {folder}=0.3, "
                           "or compose(base, [folder])) but publishes only merged: save PeftModel.merge_and_unload() "
                           "with save_pretrained (and the tokenizer) and publish that folder")
    if "config.json" not in names:
        raise PackageError(f"{folder} has no config.json: save the model with save_pretrained(folder)")
    if not any(n.endswith(".safetensors") for n in names):
        raise PackageError(f"{folder} has no *.safetensors weights: save the model with save_pretrained(folder, safe_serialization=True)")
    if "tokenizer.json" not in names and not {"vocab.json", "merges.txt"} <= names:
        raise PackageError(f"{folder} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt): save the tokenizer with tokenizer.save_pretrained(folder)")
    return files


def path_problem(rel: str) -> str | None:
    """Why a package-relative path may not be a file of a package (None: it may)."""
    parts = rel.split("/")
    if len(rel.encode()) > MAX_PATH_LENGTH:
        return f"the path is {len(rel.encode())} bytes long, at most {MAX_PATH_LENGTH}"
    if any(len(p.encode()) > MAX_PART_LENGTH for p in parts):
        return f"a folder or file name is longer than {MAX_PART_LENGTH} bytes"
    if any(p.startswith(".") for p in parts):
        return "hidden files and folders are not package files"
    if parts[0].lower() == CARD:  # the file, or a folder of that name: both collide with the card
        return f"{CARD} is the manifest memreg writes into every pulled package"
    suffix = PurePosixPath(rel).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return f"{suffix} files may hold pickles, which memreg refuses"
    if suffix in CODE_SUFFIXES:
        return "packages may not carry code (remote code is never run)"
    return None


def files_problem(paths: list[str]) -> str | None:
    """Why these paths cannot be one package's files (None: they can): a file named like the card
    memreg writes (assembly would write through a hard link into a cached blob), code or pickles,
    two entries for one path (also by case, for case-insensitive disks), a file that is also a folder."""
    seen: dict[str, str] = {}
    for path in paths:
        if problem := path_problem(path):
            return f"{path!r}: {problem}"
        if path.lower() in seen:
            return f"{path!r} is listed twice (also as {seen[path.lower()]!r})"
        seen[path.lower()] = path
    for key, path in seen.items():
        parts = key.split("/")
        for i in range(1, len(parts)):
            if (parent := "/".join(parts[:i])) in seen:
                return f"{seen[parent]!r} is both a file and the folder of {path!r}"
    return None


def read_card(folder: Path) -> PackageCard:
    path = Path(folder) / CARD
    if not path.exists():
        return PackageCard()
    try:
        return PackageCard.model_validate_json(path.read_bytes())
    except ValueError as e:
        raise PackageError(f"{path} is not a valid memreg card: {first_validation_error(e)}") from e


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON); no torch.

    Every tensor entry is checked (dtype a string, shape non-negative integers, offsets inside the
    file), so that whoever counts parameters from it meets a `SafetensorsError` naming the file, not
    a TypeError/KeyError/RecursionError from deep inside.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path.name} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 2**20 or n > size - 8:
            raise SafetensorsError(f"{path.name} is not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError) as e:  # RecursionError: "[[[[…" nested past the stack
            raise SafetensorsError(f"{path.name} is not a safetensors file (unreadable header)") from e
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path.name} is not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for name, tensor in header.items():
        if problem := _tensor_problem(tensor, data_size):
            raise SafetensorsError(f"{path.name}: tensor {name!r} {problem}; re-save the model with save_pretrained")
    return header


def _tensor_problem(tensor: object, data_size: int) -> str | None:
    if not isinstance(tensor, dict):
        return "is not a {dtype, shape, data_offsets} object"
    dtype, shape, offsets = tensor.get("dtype"), tensor.get("shape"), tensor.get("data_offsets")
    if not isinstance(dtype, str):
        return "has no dtype string"
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return "has no shape of non-negative integers"
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        return f"has data_offsets {offsets!r} outside the file's {data_size} data bytes"
    return None


def model_info(folder: Path, entries: list[FileEntry]) -> ModelInfo:
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (ValueError, RecursionError) as e:
        raise PackageError(f"{folder / 'config.json'} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise PackageError(f"{folder / 'config.json'} is not a JSON object: save the model with save_pretrained(folder)")
    params, dtypes, names = 0, Counter(), {}
    for entry in entries:
        if entry.path.endswith(".safetensors"):
            for name, tensor in safetensors_header(folder / entry.path).items():
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                params += count
                dtypes[_DTYPES.get(tensor["dtype"], tensor["dtype"].lower())] += count
                names[name] = entry.path
    check_weights_fill_config(config, names, [e.path for e in entries if e.path.endswith(".safetensors")])
    rows = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size") or 0
    return ModelInfo(
        architecture=(config.get("architectures") or ["unknown"])[0],
        model_type=config.get("model_type"),
        parameter_count=params,
        dtype=dtypes.most_common(1)[0][0] if dtypes else "unknown",
        embedding_rows=int(rows),
        files=entries,
    )


_LAYER = re.compile(r"(?:^|\.)(?:h|layers|layer|blocks|block)\.(\d+)\.")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def check_weights_fill_config(config: dict, names: dict[str, str], files: list[str]) -> None:
    """The cheap check at publish, from headers and config.json only (no torch): weights with no
    tensor, or without every block config.json declares, would load as a random init. Loading a
    memory (memreg.models.load_causal_lm(strict=True)) checks every tensor by name."""
    if not names:
        raise WeightsMismatchError(f"{', '.join(files)} hold(s) no tensors: the model would load as a random "
                                   "init; save it with save_pretrained(folder)")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    declared = next((text[k] for k in _LAYER_KEYS if type(text.get(k)) is int), None)
    found: dict[int, str] = {}
    for name, file in names.items():
        if m := _LAYER.search(name):
            found.setdefault(int(m.group(1)), file)
    if declared is None or not found:  # a naming scheme we do not know: left to the load-time check
        return
    missing = sorted(set(range(declared)) - set(found))
    extra = sorted(set(found) - set(range(declared)))
    if missing:
        raise WeightsMismatchError(f"config.json declares {declared} layers but the *.safetensors files have no "
                                   f"tensor of layer {missing[0]}" + (f" (nor of {len(missing) - 1} more)" if len(missing) > 1 else "")
                                   + ": it would load as a random init; re-save the model with save_pretrained")
    if extra:
        raise WeightsMismatchError(f"{found[extra[0]]} holds layer {extra[0]} but config.json declares only {declared} "
                                   "layers; re-save the model with save_pretrained")
