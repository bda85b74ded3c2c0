"""`compose(base, memories, weights)`: check that memories fit a base, then mix them into one LM.

Phases, each finished before the next starts (so a refusal costs no weight reads):
1. describe every memory from what is cheap to read — a registry manifest, or a package folder's
   tokenizer files, config.json and memreg.json;
2. check each memory's tokenizer against the base's (`memreg.registry.check_compatible`): a registry
   memory first by its manifest's fingerprint (a refusal that downloads nothing), then by the
   fingerprint of the tokenizer files it pulled (a manifest's copy is never trusted);
3. settle the weights (given, from manifests/cards, or "auto");
4. load the weights (safetensors, memory-mapped; the same memory twice is loaded once);
5. for "auto", fit the weights by EM on held-out text (`fit_weights`).
"""

from __future__ import annotations

import json
import re
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from memreg.composed import ComposedLM
from memreg.fit import FittedWeights, em_weights
from memreg.mixture import InvalidWeightsError, check_weights
from memreg.registry.errors import MemregError, TokenizerMismatchError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from memreg.registry import Registry

# A memory: a registry reference (law, law@1.2.0, law:stable), a package folder, a loaded model,
# or a (model, tokenizer) pair. A base: a loaded model, a Hugging Face id or folder, or a .gguf file.
MemorySpec = Union[str, os.PathLike, "PreTrainedModel", "tuple[PreTrainedModel, PreTrainedTokenizerBase]"]
BaseSpec = Union[str, os.PathLike, "PreTrainedModel"]

__all__ = [
    "BaseSpec",
    "MemorySpec",
    "ComposedLM",
    "FittedWeights",
    "MemoryNotFoundError",
    "MissingWeightError",
    "compose",
    "encode_documents",
    "fit_weights",
    "member_target_log_probs",
    "parse_memory_spec",
]


class MissingWeightError(MemregError, ValueError):
    """A memory without a weight: none given and none recommended by its manifest or card."""


class MemoryNotFoundError(MemregError, FileNotFoundError):
    """A memory given as a path that is not a package folder."""


# ------------------------------------------------------------------------------ descriptions


@dataclass
class _Memory:
    """What is known about one memory before its weights are read."""

    name: str
    key: str  # same key = same weights, loaded once
    tokenizer: Any  # a TokenizerFingerprint, a tokenizer folder or object, or None (unknown)
    rows: int | None
    recommended: float | None
    load: Callable[[], torch.nn.Module]
    # registry memories: pull, then what the pulled files say (tokenizer folder, embedding rows)
    pulled: Callable[[], tuple[Path, int | None]] | None = None

    @property
    def source(self) -> str | None:
        """How to name this memory again (save_composition): a folder, a Hub id or an exact registry
        reference; None for a model passed in memory."""
        kind, _, value = self.key.partition(":")
        return value if kind in ("path", "adapter", "ref", "hub") else None


def parse_memory_spec(spec: str) -> tuple[str, float | None]:
    """`REF[=WEIGHT]` as the command line takes it: ('law@1.0.0', 0.3) or ('./folder', None)."""
    ref, sep, weight = spec.rpartition("=") if "=" in spec else (spec, "", "")
    if not sep:
        return spec, None
    try:
        w = float(weight)
    except ValueError:
        raise InvalidWeightsError(
            f"{weight!r} in {spec!r} is not a weight: write REF=WEIGHT with a number in [0, 1], e.g. law=0.3"
        ) from None
    return ref, w


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


def _describe(spec: Any, registry: Any, registry_box: list, dtype: Any) -> _Memory:
    if isinstance(spec, tuple):  # (loaded model, its tokenizer)
        model, tok = spec
        return _Memory(f"memory {type(model).__name__}", f"id:{id(model)}", tok, _rows_of(model), None, lambda: model)
    if isinstance(spec, torch.nn.Module):  # its tokenizer is known only if it was loaded from a folder
        return _Memory(f"memory {type(spec).__name__}", f"id:{id(spec)}", _tokenizer_folder_of(spec),
                       _rows_of(spec), None, lambda: spec)
    text = os.fspath(spec)
    folder = Path(text).expanduser()
    if folder.is_dir() and (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
        return _describe_adapter(folder, dtype)
    if folder.is_dir():
        from memreg.registry.package import read_card

        card = read_card(folder)
        if card.name and card.version:
            name = f"memory {card.name}@{card.version} ({folder})"
        else:
            name = f"memory {folder}"
        tok = folder if _has_tokenizer_files(folder) else card.tokenizer
        rows = _config_rows(folder)
        rec = card.metrics.recommended_weight
        resolved = folder.resolve()
        return _Memory(name, f"path:{resolved}", tok, rows, rec, lambda: _load_folder(resolved, dtype))
    if not isinstance(spec, Path) and _HUB_ID.fullmatch(text):  # org/name: a Hugging Face Hub repository
        mem = _describe(_hub_snapshot(text), registry, registry_box, dtype)
        return replace(mem, name=f"memory {text} (Hub)", key=f"hub:{text}")
    if isinstance(spec, Path) or os.sep in text or text.startswith((".", "~")):
        raise MemoryNotFoundError(
            f"{text!r} is not a package folder: give a folder with config.json, *.safetensors and tokenizer files, "
            "or a registry reference such as law@1.0.0"
        )
    if not registry_box:
        registry_box.append(_open_registry(registry))
    reg = registry_box[0]
    manifest = reg.resolve(text)  # refuses bad references before any I/O
    ref = manifest.ref
    if manifest.version in reg.yanked(manifest.name):  # only an exact version or a tag reaches one
        warnings.warn(f"{ref} is yanked (`memreg show {ref}` says why)", UserWarning, stacklevel=4)

    box: list[Path] = []  # pulled once: checked, then loaded from the same folder

    def pulled() -> tuple[Path, int | None]:
        box.append(reg.pull(ref))
        return box[0], _config_rows(box[0])

    return _Memory(
        f"memory {ref}",
        f"ref:{ref}",
        manifest.tokenizer,  # only for a refusal that costs no download; the pulled files decide
        manifest.model.embedding_rows,
        manifest.metrics.recommended_weight,
        lambda: _load_folder(box[0] if box else reg.pull(ref), dtype),
        pulled,
    )


def _describe_adapter(folder: Path, dtype: Any) -> _Memory:
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
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base_ref)  # a Hub id: the cache, else the Hub
    rows = _config_rows(base_dir) if base_dir.is_dir() else None
    resolved = folder.resolve()
    return _Memory(f"memory {folder} (PEFT adapter on {base_ref})", f"adapter:{resolved}", tok, rows, None,
                   lambda: _load_adapter(resolved, base_ref, dtype))


def _load_adapter(folder: Path, base_ref: str, dtype: Any) -> torch.nn.Module:
    try:
        from peft import PeftModel
    except ImportError:
        raise MemregError(f"{folder} is a PEFT adapter: install peft to attach it (pip install 'memreg[peft]')") from None
    from memreg.models import load_causal_lm

    merged = PeftModel.from_pretrained(load_causal_lm(base_ref, dtype=dtype), str(folder)).merge_and_unload()
    return merged.eval()


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
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


def _tokenizer_folder_of(model: torch.nn.Module) -> Path | None:
    folder = Path(str(getattr(getattr(model, "config", None), "_name_or_path", "") or "-"))
    return folder if folder.is_dir() and _has_tokenizer_files(folder) else None


def _rows_of(model: torch.nn.Module) -> int:
    from memreg.composed import _embedding_rows

    return _embedding_rows(model)


def _check(base_tok: Any, base_rows: int, mem: _Memory, force: bool) -> None:
    from memreg.registry import check_compatible

    if base_tok is None or mem.tokenizer is None:
        missing = "the base" if base_tok is None else mem.name
        reason = f"cannot check {mem.name} against the base: no tokenizer is known for {missing}"
        if not force:
            raise TokenizerMismatchError(f"{reason}; pass tokenizer= (or a folder with tokenizer files), or force=True")
        warnings.warn(f"FORCED: {reason}; composing unchecked", UserWarning, stacklevel=3)
        return
    verdict = check_compatible(base_tok, mem.tokenizer, rows_a=base_rows, rows_b=mem.rows, name_a="the base", name_b=mem.name)
    if verdict.ok:
        return
    if not force:
        raise TokenizerMismatchError(f"{verdict.reason} (refused before loading any weights; force=True overrides)")
    warnings.warn(
        f"FORCED: {verdict.reason}. The mixture of models with different tokenizers is almost surely meaningless.",
        UserWarning,
        stacklevel=3,
    )


def _settle_weights(weights: Any, mems: list[_Memory]) -> list[float] | None:
    """Given weights are checked strictly; recommended ones are scaled down together past a sum of 1."""
    if isinstance(weights, str):
        if weights != "auto":
            raise InvalidWeightsError(f"weights={weights!r}: give numbers, None (from the manifests) or 'auto' (EM)")
        return None
    if weights is None:
        weights = [None] * len(mems)
    elif isinstance(weights, (int, float)):
        weights = [weights]
    weights = list(weights)
    if len(weights) != len(mems):
        raise InvalidWeightsError(f"{len(weights)} weights for {len(mems)} memories: give one weight per memory")
    given = [w for w in weights if w is not None]
    check_weights(given)  # the user's own numbers: refused, never rescaled
    out: list[float] = []
    from_cards: list[int] = []
    for i, (w, m) in enumerate(zip(weights, mems)):
        if w is None:
            if m.recommended is None:
                raise MissingWeightError(
                    f"{m.name} has no recommended weight: give one (REF=0.3 on the command line, weights=[...] in "
                    "Python) or fit them with weights='auto' / `memreg tune`"
                )
            from_cards.append(i)
            w = m.recommended
        out.append(float(w))
    total = sum(out)
    if total > 1 and from_cards:
        room = 1.0 - sum(out[i] for i in range(len(out)) if i not in from_cards)
        card_sum = sum(out[i] for i in from_cards)
        scale = max(room, 0.0) / card_sum
        for i in from_cards:
            out[i] *= scale
        warnings.warn(
            f"the recommended weights sum to {total:.4g} > 1: scaled down together by {scale:.4g} to "
            f"{[round(w, 4) for w in out]} (the base gets 1 - sum)",
            UserWarning,
            stacklevel=3,
        )
    return check_weights(out)


# ------------------------------------------------------------------------------ compose


def compose(
    base: BaseSpec,
    memories: MemorySpec | Sequence[MemorySpec],
    weights: Sequence[float | None] | float | str | None = None,
    *,
    registry: Registry | str | None = None,
    force: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
    held_out: str | Sequence[int] | np.ndarray | None = None,
    context: int = 1024,
    stride: int = 512,
    dtype: torch.dtype | None = None,
) -> ComposedLM:
    """Mix `memories` into `base`: p = (1 - sum w) p_base + sum_i w_i p_i, after checking tokenizers.

    base: a loaded transformers causal LM (give `tokenizer`), a Hugging Face id/folder, or a .gguf
      file (converted once into $MEMREG_HOME/models, see memreg.gguf).
    memories: one or a list of registry references (`law`, `law@1.2.0`, `law:stable`), package
      folders, loaded models, or (model, tokenizer) pairs.
    weights: one per memory in [0, 1] summing to at most 1; None (or None entries) takes each
      memory's recommended weight; "auto" fits them by EM on `held_out` text (or token ids).
    registry: a `Registry`, a URL, or None ($MEMREG_REGISTRY, else the local default).
    force: compose even when a tokenizer check fails (with a loud warning).
    """
    if isinstance(memories, (str, os.PathLike, torch.nn.Module, tuple)):
        memories = [memories]
    memories = list(memories)  # none at all gives the base alone, as a ComposedLM
    if weights == "auto" and held_out is None:
        raise InvalidWeightsError("weights='auto' fits the weights on held-out text: pass held_out=TEXT or token ids")

    base_model, tokenizer, base_tok = _base(base, tokenizer, dtype)
    base_rows = _rows_of(base_model)
    registry_box: list = []
    mems = [_describe(m, registry, registry_box, dtype) for m in memories]  # 1. describe
    for m in mems:  # 2. check, before any memory weight is read
        _check(base_tok, base_rows, m, force)
    for m in mems:  # ... and again from the pulled files: a manifest's fingerprint is never trusted
        if m.pulled is not None:
            m.tokenizer, m.rows = m.pulled()
            _check(base_tok, base_rows, m, force)
    settled = _settle_weights(weights, mems)  # 3. weights (errors before loading too)

    loaded: dict[str, torch.nn.Module] = {}  # 4. load, once per distinct memory
    models = []
    for m in mems:
        if m.key not in loaded:
            loaded[m.key] = m.load().to(base_model.device)
        models.append(loaded[m.key])
    vocab = len(tokenizer) if tokenizer is not None else None
    composed = ComposedLM(
        base_model,
        models,
        settled if settled is not None else [0.0] * len(models),
        vocab_size=vocab,
        tokenizer=tokenizer,
        names=[m.name.removeprefix("memory ") for m in mems],
    ).eval()
    if settled is None:  # 5. "auto"
        fitted = fit_weights(composed, held_out, context=context, stride=stride)
        composed.set_weights(fitted.weights)
    composed.sources = {  # what save_composition writes down
        "base": os.fspath(base) if isinstance(base, (str, os.PathLike)) else None,
        "memories": [m.source for m in mems],
        "registry": registry_box[0].url if registry_box else (registry if isinstance(registry, str) else None),
    }
    return composed


COMPOSITION_FILE = "memreg-composition.json"


def save_composition(composed: ComposedLM, folder: str | os.PathLike) -> Path:
    """Write how to rebuild `composed` (base, memories, weights, registry) into FOLDER/memreg-composition.json:
    references, not weights, so a colleague rebuilds it with load_composition from the same sources
    (registry references are exact versions, so the mixture is the same)."""
    sources = getattr(composed, "sources", None) or {}
    missing = [n for n, src in zip(composed.names, sources.get("memories", [])) if src is None]
    if not sources or sources.get("base") is None or missing:
        what = "the base" if not missing else ", ".join(missing)
        raise ValueError(f"cannot save this composition: {what} was passed as a loaded model; compose from "
                         "folders, Hub ids or registry references to save it")
    doc = {"format_version": 1, "base": sources["base"], "registry": sources.get("registry"),
           "memories": [{"source": src, "weight": w} for src, w in zip(sources["memories"], composed.weights)]}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    from memreg.registry.fsutil import atomic_write_json

    atomic_write_json(out / COMPOSITION_FILE, doc, indent=2)
    return out / COMPOSITION_FILE


def load_composition(folder: str | os.PathLike, **kwargs: Any) -> ComposedLM:
    """compose() again from a folder written by save_composition (keyword arguments as compose's)."""
    path = Path(folder) / COMPOSITION_FILE
    try:
        doc = json.loads(path.read_text())
        memories, weights = [m["source"] for m in doc["memories"]], [float(m["weight"]) for m in doc["memories"]]
    except FileNotFoundError:
        raise MemoryNotFoundError(f"{folder} holds no {COMPOSITION_FILE}: write one with save_composition") from None
    except (ValueError, KeyError, TypeError) as e:
        raise MemregError(f"{path} is not a composition file: {e}") from None
    if doc.get("format_version") != 1:
        raise MemregError(f"{path} has format_version {doc.get('format_version')!r}: this memreg reads 1")
    kwargs.setdefault("registry", doc.get("registry"))
    return compose(doc["base"], memories, weights, **kwargs)


def _base(base: Any, tokenizer: Any, dtype: Any) -> tuple[torch.nn.Module, Any, Any]:
    """(model, tokenizer object or None, what to fingerprint the base by)."""
    if isinstance(base, torch.nn.Module):
        model = base
        if tokenizer is None and (folder := _tokenizer_folder_of(model)) is not None:
            tokenizer = _load_tokenizer(folder)
    else:
        from memreg.gguf import resolve_model_ref
        from memreg.models import load_causal_lm

        name = resolve_model_ref(base)  # a .gguf becomes its converted folder, the tokenizer's too
        model = load_causal_lm(name, dtype=dtype)
        if tokenizer is None:
            tokenizer = _load_tokenizer(name)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _load_tokenizer(tokenizer)
    return model, tokenizer, tokenizer


def _load_tokenizer(name: Any):
    from memreg.models import load_tokenizer

    return load_tokenizer(name)  # a folder, a Hugging Face id or a .gguf file


# ------------------------------------------------------------------------------ held-out text


def encode_documents(tokenizer: Any, data: Any) -> list[np.ndarray]:
    """Text (str), documents (list of str), or token ids (one sequence or a list of them) -> id arrays."""
    if isinstance(data, str):
        data = [data]
    if isinstance(data, (np.ndarray, torch.Tensor)) and np.asarray(data).ndim == 1:
        data = [data]
    data = list(data)
    if data and isinstance(data[0], (int, np.integer)):
        data = [data]
    docs = []
    for d in data:
        if isinstance(d, str):
            if tokenizer is None:
                raise ValueError("text needs a tokenizer: pass tokenizer= to compose() or give token ids")
            d = tokenizer(d, add_special_tokens=False)["input_ids"]
        arr = np.asarray(d.cpu() if isinstance(d, torch.Tensor) else d, dtype=np.int64)
        if arr.size >= 2:
            docs.append(arr)
    if not docs:
        raise ValueError("no held-out document has 2 or more tokens to score")
    return docs


def member_target_log_probs(
    model: ComposedLM, data: Any, *, context: int = 1024, stride: int = 512, progress=None
) -> list[np.ndarray]:
    """Per-token log p(observed token) of each distinct member (base first): one pass per member."""
    from memreg.evaluate import target_log_probs

    docs = encode_documents(model.tokenizer, data)
    out = []
    for member in model.members:
        parts = [
            target_log_probs(member, d, context=context, stride=stride, vocab_size=model.vocab_size, progress=progress)
            for d in docs
        ]
        out.append(np.concatenate(parts))
    return out


def fit_weights(
    source: ComposedLM | Sequence[np.ndarray],
    data: Any = None,
    *,
    context: int = 1024,
    stride: int = 512,
    max_iter: int = 5000,
    tol: float = 1e-12,
) -> FittedWeights:
    """EM for the memory weights on held-out text.

    source: a ComposedLM (then `data` is text, documents or token ids, scored once per member), or
    per-token log-probabilities, base first, one array per memory. Returns one weight per memory.
    """
    if isinstance(source, ComposedLM):
        if data is None:
            raise ValueError("fit_weights(composed, data): give held-out text or token ids")
        lps = member_target_log_probs(source, data, context=context, stride=stride)
        fitted = em_weights(lps, max_iter=max_iter, tol=tol)
        return FittedWeights(source.per_memory(fitted.weights), fitted.base_weight, fitted.perplexity, fitted.base_perplexity,
                             fitted.tokens, fitted.iterations, fitted.converged)
    return em_weights(list(source), max_iter=max_iter, tol=tol)
