"""Where a memory comes from, described before its weights are read: a registry reference, a
package folder, a Hugging Face Hub id (its cached snapshot), a saved PEFT adapter, or a model already
loaded. Each description says what to check (tokenizer, embedding rows), what the manifest or card
recommends, and how to load the weights once the checks pass (see compose.py).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from memreg.compose.members import embedding_rows
from memreg.core.errors import AdapterWeightsMismatchError, MemoryNotFoundError, MemregError


@dataclass
class Memory:
    """What is known about one memory before its weights are read."""

    name: str
    key: str  # same key = same weights, loaded once
    tokenizer: Any  # a TokenizerFingerprint, a tokenizer folder or object, or None (unknown)
    rows: int | None
    recommended: float | None
    load: Callable[[], torch.nn.Module]
    # registry memories: pull, then what the pulled files say (tokenizer folder, embedding rows)
    pulled: Callable[[], tuple[Path, int | None]] | None = None
    digest: str | None = None  # registry memories: their manifest's (manifest_digest)
    pulled_to: list[Path] | None = None  # registry memories: the folder once pulled (what else the package ships)

    @property
    def source(self) -> str | None:
        """How to name this memory again: an absolute folder, a Hub id or an exact registry
        reference; None for a model passed in memory."""
        kind, _, value = self.key.partition(":")
        return value if kind in ("path", "adapter", "ref", "hub") else None

    @property
    def reference(self) -> dict | None:
        """This memory as a composition's config.json names it (memreg.compose.config), or None."""
        kind, _, value = self.key.partition(":")
        if kind == "ref":
            return {"registry": value, "digest": self.digest}
        return {kind: value} if kind in ("path", "adapter", "hub") else None


def manifest_digest(manifest: Any) -> str:
    """sha256 over a manifest's content (what two publications of one version agree on): a saved
    composition records it, so a registry that later serves other content under the version is noticed."""
    import hashlib

    body = json.dumps(manifest.content_key(), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def _open_registry(registry: Any):
    if registry is not None and hasattr(registry, "resolve"):
        return registry
    from memreg.registry import Registry

    return Registry.open(registry)


def _config_rows(folder: Path) -> int | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    rows = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    return int(rows) if rows else None


def _has_tokenizer_files(folder: Path) -> bool:
    return (folder / "tokenizer.json").exists() or (folder / "vocab.json").exists()


def _load_folder(folder: Path, dtype: Any = None) -> torch.nn.Module:
    from memreg.models import load_causal_lm

    # safetensors (memory-mapped), never remote code; a missing or unexpected tensor is an error
    return load_causal_lm(folder, dtype=dtype, strict=True)


def describe(spec: Any, registry: Any, registry_box: list, dtype: Any) -> Memory:
    """What is known about the memory `spec` names, before its weights are read. `registry_box` holds
    the registry once one is opened (only a reference opens one), for the next memories to share."""
    if isinstance(spec, tuple):  # (loaded model, its tokenizer)
        model, tok = spec
        return Memory(f"memory {type(model).__name__}", f"id:{id(model)}", tok, rows_of(model), None, lambda: model)
    if isinstance(spec, torch.nn.Module):  # its tokenizer is known only if it was loaded from a folder
        return Memory(f"memory {type(spec).__name__}", f"id:{id(spec)}", tokenizer_folder_of(spec),
                       rows_of(spec), None, lambda: spec)
    text = os.fspath(spec)
    folder = Path(text).expanduser()
    if folder.is_dir() and (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
        return _describe_adapter(folder, dtype)
    if folder.is_dir():
        return _describe_folder(folder, dtype)
    if not isinstance(spec, Path) and HUB_ID.fullmatch(text):  # org/name: a Hugging Face Hub repository
        mem = describe(_hub_snapshot(text), registry, registry_box, dtype)
        return replace(mem, name=f"memory {text} (Hub)", key=f"hub:{text}")
    if isinstance(spec, Path) or os.sep in text or text.startswith((".", "~")):
        raise MemoryNotFoundError(
            f"{text!r} is not a package folder: give a folder with config.json, *.safetensors and tokenizer files, "
            "or a registry reference such as law@1.0.0"
        )
    if not registry_box:
        registry_box.append(_open_registry(registry))
    return _describe_reference(registry_box[0], text, dtype)


def _describe_folder(folder: Path, dtype: Any) -> Memory:
    """A package folder: its memreg.json (if any) names it and recommends a weight."""
    from memreg.registry.package import read_card

    card = read_card(folder)
    if card.name and card.version:
        name = f"memory {card.name}@{card.version} ({folder})"
    else:
        name = f"memory {folder}"
    tok = folder if _has_tokenizer_files(folder) else card.tokenizer
    resolved = folder.resolve()
    return Memory(name, f"path:{resolved}", tok, _config_rows(folder), card.metrics.recommended_weight,
                  lambda: _load_folder(resolved, dtype))


def _describe_reference(reg: Any, text: str, dtype: Any) -> Memory:
    """A registry reference: described by its manifest (no download); pulled when checked again."""
    manifest = reg.resolve(text)  # refuses bad references before any I/O
    ref = manifest.ref
    if manifest.version in reg.yanked(manifest.name):  # only an exact version or a tag reaches one
        # stacklevel 6: _describe_reference <- describe <- assemble's list comprehension <- assemble <- compose <- the caller
        warnings.warn(f"{ref} is yanked (`memreg show {ref}` says why)", UserWarning, stacklevel=6)

    box: list[Path] = []  # pulled once: checked, then loaded from the same folder

    def pulled() -> tuple[Path, int | None]:
        box.append(reg.pull(ref))
        return box[0], _config_rows(box[0])

    return Memory(
        f"memory {ref}",
        f"ref:{ref}",
        manifest.tokenizer,  # only for a refusal that costs no download; the pulled files decide
        manifest.model.embedding_rows,
        manifest.metrics.recommended_weight,
        lambda: _load_folder(box[0] if box else pulled()[0], dtype),
        pulled,
        manifest_digest(manifest),
        box,
    )


def _describe_adapter(folder: Path, dtype: Any) -> Memory:
    """A saved PEFT adapter (adapter_config.json + adapter_model.safetensors): its base model with
    the adapter merged in. The tokenizer is the adapter folder's if it has one, else its base's."""
    try:
        base_ref = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        raise MemoryNotFoundError(f"{folder}/adapter_config.json names no base_model_name_or_path: "
                                  "save the adapter with PEFT's save_pretrained") from None
    if not (folder / "adapter_model.safetensors").exists():
        raise MemoryNotFoundError(f"{folder} has no adapter_model.safetensors (memreg never unpickles .bin weights): "
                                  "save the adapter with safe_serialization=True")
    base_dir = Path(base_ref).expanduser()
    if _has_tokenizer_files(folder):
        tok: Any = folder
    elif base_dir.is_dir() and _has_tokenizer_files(base_dir):
        tok = base_dir
    else:
        from memreg.models import load_tokenizer

        tok = load_tokenizer(base_ref)  # a Hub id: the cache, else the Hub; never remote code
    rows = _config_rows(base_dir) if base_dir.is_dir() else None
    resolved = folder.resolve()
    return Memory(f"memory {folder} (PEFT adapter on {base_ref})", f"adapter:{resolved}", tok, rows, None,
                   lambda: _load_adapter(resolved, base_ref, dtype))


def _load_adapter(folder: Path, base_ref: str, dtype: Any) -> torch.nn.Module:
    try:
        from peft import PeftModel
    except ImportError:
        raise MemregError(f"{folder} is a PEFT adapter: install peft to attach it (pip install 'memreg[peft]')") from None
    from memreg.models import load_causal_lm
    from memreg.registry.package import safetensors_header

    path = folder / "adapter_model.safetensors"
    have = set(safetensors_header(path))  # a truncated or corrupt file: a SafetensorsError naming it, before peft
    # the base as strictly as any member; peft's own load is non-strict, so the adapter is checked after it
    peft = PeftModel.from_pretrained(load_causal_lm(base_ref, dtype=dtype, strict=True), str(folder),
                                     trust_remote_code=False)
    _check_adapter_tensors(path, have, peft)
    return peft.merge_and_unload().eval()


def _check_adapter_tensors(path: Path, have: set[str], peft: Any) -> None:
    """The adapter file holds exactly the tensors peft saves for the modules it created: a missing one
    would stay at peft's init (random with init_lora_weights=false), an extra one would be dropped."""
    from peft import get_peft_model_state_dict

    from memreg.models import mismatch_report

    expected = set(get_peft_model_state_dict(peft))
    if report := mismatch_report({"missing": expected - have, "unexpected": have - expected}):
        raise AdapterWeightsMismatchError(
            f"{path}: the LoRA tensors do not match adapter_config.json: {report}; refused rather than "
            "initialised at random: re-save the adapter with save_pretrained from the trained PeftModel")


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.md"]  # weights, config, tokenizer, card: no code


def _hub_snapshot(repo_id: str) -> Path:
    """The local folder of a Hub repository: the cache if it holds one (no request), else a
    download (unless HF_HUB_OFFLINE). Safetensors and text files only, never pickles or code."""
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES, local_files_only=True))
    except Exception as cached_error:  # noqa: BLE001 - not in the cache: try the Hub once
        if constants.HF_HUB_OFFLINE:
            raise MemoryNotFoundError(f"{repo_id!r} is not a folder, and the Hub cache has no snapshot of it "
                                      f"(HF_HUB_OFFLINE is set): download it first or give a folder") from cached_error
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except Exception as e:  # noqa: BLE001 - one line: what was tried and what to do
        raise MemoryNotFoundError(
            f"{repo_id!r} is not a folder, not in the Hub cache, and the Hub did not serve it "
            f"({type(e).__name__}): check the repository id and the network, or give a folder or a registry reference"
        ) from None


def tokenizer_folder_of(model: torch.nn.Module) -> Path | None:
    folder = Path(str(getattr(getattr(model, "config", None), "_name_or_path", "") or "-"))
    return folder if folder.is_dir() and _has_tokenizer_files(folder) else None


def rows_of(model: torch.nn.Module) -> int:
    return embedding_rows(model)


