"""Assembling a composition: check that memories fit a base, then load the members.

Phases, each finished before the next starts (so a refusal costs no weight reads):
1. describe every memory from what is cheap to read — a registry manifest, or a package folder's
   tokenizer files, config.json and memreg.json;
2. check each memory's tokenizer against the base's (`memreg.registry.check_compatible`): a registry
   memory first by its manifest's fingerprint (a refusal that downloads nothing), then by the
   fingerprint of the tokenizer files it pulled (a manifest's copy is never trusted);
3. settle the weights (given, from manifests/cards, or "auto": fitted after loading, memreg.compose.build);
4. load the weights (safetensors, memory-mapped; the same memory twice is loaded once).

`assemble` returns the parts (members, the config with their references, the tokenizer);
`assemble_saved` does the same from a saved composition's config, also checking that each
registry version still has the digest recorded when it was saved. The model class is built from
the parts by its callers (memreg.compose.build, ComposedForCausalLM.from_pretrained).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch

from memreg.compose.config import CompositionConfig, reference_text
from memreg.compose.sources import HUB_ID, Memory, describe, rows_of, tokenizer_folder_of
from memreg.mixture import InvalidWeightsError, check_weights
from memreg.core.errors import (CompositionFileError, ManifestDigestChangedError, MissingWeightError,
                                 TokenizerMismatchError)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from memreg.registry import Registry

# A memory: a registry reference (law, law@1.2.0, law:stable), a package folder, a loaded model,
# or a (model, tokenizer) pair. A base: a loaded model, a Hugging Face id or folder, or a .gguf file.
MemorySpec = Union[str, os.PathLike, "PreTrainedModel", "tuple[PreTrainedModel, PreTrainedTokenizerBase]"]
BaseSpec = Union[str, os.PathLike, "PreTrainedModel"]

# The name this error had before it was told apart from a blob's DigestMismatchError
# (memreg.registry.errors); kept so that `from memreg.compose import DigestMismatchError` still works.
DigestMismatchError = ManifestDigestChangedError


@dataclass
class Parts:
    """What the model class is built from."""

    config: CompositionConfig
    members: list[torch.nn.Module]
    member_of_memory: list[int]
    tokenizer: Any
    fit: bool  # weights="auto": the weights are still to be fitted
    folders: list[Path | None] = field(default_factory=list)  # each memory's package folder, where it has one


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
    # warnings at stacklevel 5: _check <- _check_tokenizers <- assemble <- compose <- the caller's line
    from memreg.registry import check_compatible

    if base_tok is None or mem.tokenizer is None:
        missing = "the base" if base_tok is None else mem.name
        reason = f"cannot check {mem.name} against the base: no tokenizer is known for {missing}"
        if not force:
            raise TokenizerMismatchError(f"{reason}; pass tokenizer= (or a folder with tokenizer files), or force=True")
        warnings.warn(f"FORCED: {reason}; composing unchecked", UserWarning, stacklevel=5)
        return
    verdict = check_compatible(base_tok, mem.tokenizer, rows_a=base_rows, rows_b=mem.rows, name_a="the base", name_b=mem.name)
    if verdict.ok:
        return
    if not force:
        raise TokenizerMismatchError(f"{verdict.reason} (refused before loading any weights; force=True overrides)")
    warnings.warn(
        f"FORCED: {verdict.reason}. The mixture of models with different tokenizers is almost surely meaningless.",
        UserWarning,
        stacklevel=5,
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
            stacklevel=4,
        )
    return out  # checked by the model, which every weight enters through




@dataclass(frozen=True)
class LoadOptions:
    """How members are found, checked and loaded: compose()'s keywords of the same names."""

    registry: Registry | str | None = None
    force: bool = False
    tokenizer: PreTrainedTokenizerBase | None = None
    dtype: torch.dtype | None = None
    trust: str | None = None
    public_keys: Sequence[str | os.PathLike] = ()
    digests: Sequence[str | None] | None = None  # a saved composition's: each registry version's, checked


def assemble(
    base: BaseSpec,
    memories: MemorySpec | Sequence[MemorySpec],
    weights: Sequence[float | None] | float | str | None = None,
    options: LoadOptions = LoadOptions(),
) -> Parts:
    """Describe, check, settle the weights and load (see the module docstring)."""
    registry, dtype, digests = options.registry, options.dtype, options.digests
    memories = _as_list(memories)  # none at all gives the base alone
    base_model, tokenizer, base_tok = _base(base, options.tokenizer, dtype)
    registry_box: list = []
    mems = [describe(m, registry, registry_box, dtype) for m in memories]  # 1. describe
    if digests is not None:
        _check_digests(mems, digests, registry_box)
    _check_signatures(registry_box, mems, options.trust, options.public_keys)  # before any memory byte is pulled
    _check_tokenizers(base_tok, rows_of(base_model), mems, options.force)  # 2. check, before any memory weight is read
    settled = _settle_weights(weights, mems)  # 3. weights (errors before loading too)
    members, member_of_memory = _load_once(mems, base_model)  # 4. load
    config = CompositionConfig(
        base=_base_reference(base),
        memories=[m.reference for m in mems],
        weights=settled if settled is not None else [0.0] * len(mems),
        names=[m.name.removeprefix("memory ") for m in mems],
        registry=registry_box[0].url if registry_box else (registry if isinstance(registry, str) else None),
        vocab_size=len(tokenizer) if tokenizer is not None else None,
    )
    return Parts(config, members, member_of_memory, tokenizer, settled is None,
                 [_folder_of(m) for m in mems])


def _folder_of(mem: Memory) -> Path | None:
    """The package folder a memory was loaded from (a registry version's pulled folder), for what
    else the package ships (a router)."""
    kind, _, value = mem.key.partition(":")
    if kind == "path":
        return Path(value)
    if kind == "ref" and mem.pulled_to:
        return Path(mem.pulled_to[0])
    return None


# from_pretrained's keywords that only matter for a model with weights of its own (Hub downloads of
# them): AutoModelForCausalLM passes them along; a composition's members are found by reference
_HUB_KEYWORDS = {"cache_dir", "force_download", "local_files_only", "proxies", "resume_download", "revision", "token",
                 "subfolder", "_from_auto", "_from_pipeline", "trust_remote_code", "adapter_kwargs", "code_revision",
                 "_commit_hash", "use_safetensors", "use_auth_token", "attn_implementation", "low_cpu_mem_usage"}


def assemble_saved(config: CompositionConfig, folder: Path | None, *, dtype: Any = None, torch_dtype: Any = None,
                   device_map: Any = None, registry: Registry | str | None = None, force: bool = False,
                   trust: str | None = None, public_keys: Sequence[str | os.PathLike] = (),
                   **hub: Any) -> Parts:
    """The parts of a saved composition (config.json read from `folder`), as from_pretrained takes them."""
    unknown = sorted(k for k, v in hub.items() if k not in _HUB_KEYWORDS and v is not None)
    if unknown:
        raise TypeError(f"from_pretrained() got {', '.join(unknown)}, which a composition does not take "
                        "(dtype, device_map, registry, force, trust, public_keys)")
    where = str(folder) if folder is not None else "this composition"
    config.check(where)
    dtype = dtype if dtype is not None else torch_dtype
    dtype = None if dtype == "auto" else (getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    memories = [_saved_spec(m, folder) for m in config.memories]
    options = LoadOptions(registry=registry if registry is not None else config.registry, force=force, dtype=dtype,
                          trust=trust, public_keys=public_keys, digests=[m.get("digest") for m in config.memories])
    parts = assemble(_saved_spec(config.base, folder), memories, list(config.weights), options)
    parts.config.names = list(config.names or parts.config.names)
    if device_map is not None:
        device = _one_device(device_map)
        parts.members = [m.to(device) for m in parts.members]
    return parts


def _saved_spec(ref: dict, folder: Path | None) -> Any:
    """A reference of config.json as describe() takes it: a folder as a Path (never looked up in a registry)."""
    text = reference_text(ref, folder)
    return Path(text) if ("path" in ref or "adapter" in ref) else text


def _one_device(device_map: Any) -> torch.device:
    if isinstance(device_map, (str, torch.device, int)) and str(device_map) not in ("auto", "balanced", "sequential"):
        return torch.device(device_map)
    if isinstance(device_map, dict) and set(device_map) == {""}:
        return torch.device(device_map[""])
    raise ValueError(f"device_map={device_map!r}: a composition runs on one device; give one (e.g. 'cuda:0' or 'cpu')")


def _check_digests(mems: list[Memory], digests: Sequence[str | None], registry_box: list) -> None:
    for m, want in zip(mems, digests):
        if want is not None and m.digest is not None and m.digest != want:
            where = registry_box[0].url if registry_box else "the registry"
            raise ManifestDigestChangedError(
                f"{m.source} in {where} has manifest digest {m.digest}, but the composition was saved with {want}: "
                "the registry serves other content under that version; refused rather than mixing a different memory")


def _base_reference(base: Any) -> dict | None:
    """The base as config.json names it: an absolute path, a Hub id, or None for a loaded model."""
    if isinstance(base, torch.nn.Module):
        return None
    text = os.fspath(base)
    path = Path(text).expanduser()
    if path.exists():
        return {"path": str(path.resolve())}
    if HUB_ID.fullmatch(text) or "/" not in text:
        return {"hub": text}
    raise CompositionFileError(f"the base {text!r} is neither an existing path nor a Hub id")


def _check_signatures(registry_box: list, mems: list[Memory], trust: str | None,
                      public_keys: Sequence[str | os.PathLike]) -> None:
    from memreg.registry.trust import enforce_refs

    refs = [m.source for m in mems if m.key.startswith("ref:")]
    enforce_refs(registry_box[0] if registry_box else None, refs, policy=trust, public_keys=public_keys,
                 warn=lambda line: warnings.warn(line, UserWarning, stacklevel=7))  # to compose's caller


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


def _load_once(mems: list[Memory], base: torch.nn.Module) -> tuple[list[torch.nn.Module], list[int]]:
    """The distinct members (base first) on the base's device, and which member each memory is:
    the same memory twice is loaded once."""
    members, index = [base], {}
    device = next(base.parameters()).device
    for m in mems:
        if m.key not in index:
            members.append(m.load().to(device))
            index[m.key] = len(members) - 1
    return members, [index[m.key] for m in mems]


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


