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
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from memreg.composed import ComposedLM
from memreg.fit import FittedWeights, em_weights
from memreg.memory_sources import Memory, MemoryNotFoundError, describe, rows_of, tokenizer_folder_of
from memreg.mixture import InvalidWeightsError, check_weights
from memreg.registry.errors import MemregError, TokenizerMismatchError

if TYPE_CHECKING:
    from fsspec.callbacks import Callback
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


def _check(base_tok: Any, base_rows: int, mem: Memory, force: bool) -> None:
    # warnings at stacklevel 4: _check <- _check_tokenizers <- compose <- the caller's line
    from memreg.registry import check_compatible

    if base_tok is None or mem.tokenizer is None:
        missing = "the base" if base_tok is None else mem.name
        reason = f"cannot check {mem.name} against the base: no tokenizer is known for {missing}"
        if not force:
            raise TokenizerMismatchError(f"{reason}; pass tokenizer= (or a folder with tokenizer files), or force=True")
        warnings.warn(f"FORCED: {reason}; composing unchecked", UserWarning, stacklevel=4)
        return
    verdict = check_compatible(base_tok, mem.tokenizer, rows_a=base_rows, rows_b=mem.rows, name_a="the base", name_b=mem.name)
    if verdict.ok:
        return
    if not force:
        raise TokenizerMismatchError(f"{verdict.reason} (refused before loading any weights; force=True overrides)")
    warnings.warn(
        f"FORCED: {verdict.reason}. The mixture of models with different tokenizers is almost surely meaningless.",
        UserWarning,
        stacklevel=4,
    )


def _settle_weights(weights: Any, mems: list[Memory]) -> list[float] | None:
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
    trust: str | None = None,
    public_keys: Sequence[str | os.PathLike] = (),
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
    trust, public_keys: signatures of registry memories (memreg.registry.trust): "off", "warn" (a
      UserWarning for one no trusted key signed) or "require" (UntrustedMemoryError); None reads
      $MEMREG_TRUST, else warn. Keys: `public_keys`, $MEMREG_PUBLIC_KEYS and the trust file.
    """
    memories = _as_list(memories)  # none at all gives the base alone, as a ComposedLM
    if weights == "auto" and held_out is None:
        raise InvalidWeightsError("weights='auto' fits the weights on held-out text: pass held_out=TEXT or token ids")

    base_model, tokenizer, base_tok = _base(base, tokenizer, dtype)
    registry_box: list = []
    mems = [describe(m, registry, registry_box, dtype) for m in memories]  # 1. describe
    _check_signatures(registry_box, mems, trust, public_keys)  # before any memory byte is pulled
    _check_tokenizers(base_tok, rows_of(base_model), mems, force)  # 2. check, before any memory weight is read
    settled = _settle_weights(weights, mems)  # 3. weights (errors before loading too)
    models = _load_once(mems, base_model.device)  # 4. load
    composed = ComposedLM(
        base_model,
        models,
        settled if settled is not None else [0.0] * len(models),
        vocab_size=len(tokenizer) if tokenizer is not None else None,
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


def _check_signatures(registry_box: list, mems: list[Memory], trust: str | None,
                      public_keys: Sequence[str | os.PathLike]) -> None:
    from memreg.registry.trust import enforce_refs

    refs = [m.source for m in mems if m.key.startswith("ref:")]
    enforce_refs(registry_box[0] if registry_box else None, refs, policy=trust, public_keys=public_keys,
                 warn=lambda line: warnings.warn(line, UserWarning, stacklevel=6))  # to compose's caller


def _as_list(memories: MemorySpec | Sequence[MemorySpec]) -> list[MemorySpec]:
    """One memory or a sequence of them (a (model, tokenizer) tuple is one memory, not two)."""
    if isinstance(memories, (str, os.PathLike, torch.nn.Module, tuple)):
        return [memories]
    return list(memories)


def _check_tokenizers(base_tok: Any, base_rows: int, mems: list[Memory], force: bool) -> None:
    """Each memory's tokenizer against the base's: from its description first, then, for a registry
    memory, again from the files it pulled (a manifest's fingerprint is never trusted)."""
    for m in mems:
        _check(base_tok, base_rows, m, force)
    for m in mems:
        if m.pulled is not None:
            m.tokenizer, m.rows = m.pulled()
            _check(base_tok, base_rows, m, force)


def _load_once(mems: list[Memory], device: torch.device) -> list[torch.nn.Module]:
    """Each memory's weights on the base's device; the same memory twice is loaded once."""
    loaded: dict[str, torch.nn.Module] = {}
    for m in mems:
        if m.key not in loaded:
            loaded[m.key] = m.load().to(device)
    return [loaded[m.key] for m in mems]


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
        if tokenizer is None and (folder := tokenizer_folder_of(model)) is not None:
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
    model: ComposedLM, data: Any, *, context: int = 1024, stride: int = 512, progress: Callback | None = None
) -> list[np.ndarray]:
    """Per-token log p(observed token) of each distinct member (base first): one pass per member.
    `progress` (an fsspec Callback) is given the total, members x scored tokens, then advances per batch."""
    from memreg.evaluate import target_log_probs

    docs = encode_documents(model.tokenizer, data)
    advance = None
    if progress is not None:
        progress.set_size(len(model.members) * sum(d.size - 1 for d in docs))
        advance = progress.relative_update
    out = []
    for member in model.members:
        parts = [
            target_log_probs(member, d, context=context, stride=stride, vocab_size=model.vocab_size, progress=advance)
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
    progress: Callback | None = None,
) -> FittedWeights:
    """EM for the memory weights on held-out text.

    source: a ComposedLM (then `data` is text, documents or token ids, scored once per member, with
    `progress` as in member_target_log_probs), or per-token log-probabilities, base first, one
    array per memory. Returns one weight per memory.
    """
    if isinstance(source, ComposedLM):
        if data is None:
            raise ValueError("fit_weights(composed, data): give held-out text or token ids")
        lps = member_target_log_probs(source, data, context=context, stride=stride, progress=progress)
        fitted = em_weights(lps, max_iter=max_iter, tol=tol)
        return FittedWeights(source.per_memory(fitted.weights), fitted.base_weight, fitted.perplexity, fitted.base_perplexity,
                             fitted.tokens, fitted.iterations, fitted.converged)
    return em_weights(list(source), max_iter=max_iter, tol=tol)
