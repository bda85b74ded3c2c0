"""`compose(base, memories, weights)`: the SDK's entry point, a `ComposedForCausalLM` from references.

The checks and loading are `memreg.compose.assemble`'s; weights="auto" is fitted here, by EM on
held-out text, once the members are loaded. `save_composition` / `load_composition` are the
model's own `save_pretrained` / `from_pretrained` under the names the SDK had first.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from memreg.compose.assemble import BaseSpec, LoadOptions, MemorySpec, assemble
from memreg.compose.model import ComposedForCausalLM
from memreg.compose.scoring import fit_weights
from memreg.mixture import InvalidWeightsError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from memreg.registry import Registry


def compose(
    base: BaseSpec,
    memories: MemorySpec | Sequence[MemorySpec],
    weights: Sequence[float | None] | float | str | None = None,
    *,
    registry: Registry | str | None = None,
    force: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
    held_out: str | Sequence[int] | np.ndarray | None = None,
    context: int | None = None,
    stride: int | None = None,
    dtype: torch.dtype | None = None,
    trust: str | None = None,
    public_keys: Sequence[str | os.PathLike] = (),
    router: Any = "auto",
) -> ComposedForCausalLM:
    """Mix `memories` into `base`: p = (1 - sum w) p_base + sum_i w_i p_i, after checking tokenizers.

    base: a loaded transformers causal LM (give `tokenizer`), a Hugging Face id/folder, or a .gguf
      file (converted once into $MEMREG_HOME/models, see memreg.gguf).
    memories: one or a list of registry references (`law`, `law@1.2.0`, `law:stable`), package
      folders, Hub ids, PEFT adapter folders, loaded models, or (model, tokenizer) pairs.
    weights: one per memory in [0, 1] summing to at most 1; None (or None entries) takes each
      memory's recommended weight; "auto" fits them by EM on `held_out` text (or token ids), in
      sliding windows of `context` tokens (default: the smallest member's positions, at most 1024).
    registry: a `Registry`, a URL, or None ($MEMREG_REGISTRY, else the local default).
    force: compose even when a tokenizer check fails (with a loud warning).
    trust, public_keys: signatures of registry memories (memreg.registry.trust): "off", "warn" (a
      UserWarning for one no trusted key signed) or "require" (UntrustedMemoryError); None reads
      $MEMREG_TRUST, else warn. Keys: `public_keys`, $MEMREG_PUBLIC_KEYS and the trust file.
    router: per-token weights (memreg.router). "auto": the router a single memory's package ships
      (router/), if it was fitted for this base, else the fixed weights with a warning saying why;
      a router folder or a loaded Router: that one, refused (RouterMismatchError) for another base;
      None: the fixed weights.

    Returns a transformers model (`PreTrainedModel` + `GenerationMixin`): forward gives the mixture's
    log-probabilities as logits, `generate` is transformers' own, `save_pretrained` writes references.
    """
    if weights == "auto" and held_out is None:
        raise InvalidWeightsError("weights='auto' fits the weights on held-out text: pass held_out=TEXT or token ids")
    options = LoadOptions(registry=registry, force=force, tokenizer=tokenizer, dtype=dtype, trust=trust,
                          public_keys=public_keys)
    parts = assemble(base, memories, weights, options)
    model = ComposedForCausalLM(parts.config, parts.members, member_of_memory=parts.member_of_memory,
                                tokenizer=parts.tokenizer).eval()
    if parts.fit:  # "auto"
        model.set_weights(fit_weights(model, held_out, context=context, stride=stride).weights)
    _set_router(model, router, parts.folders)
    return model


def _set_router(model: ComposedForCausalLM, router: Any, folders: Sequence[Any]) -> None:
    from memreg.core.errors import RouterMismatchError
    from memreg.router.io import load_router
    from memreg.schemas.router import ROUTER_CONFIG, ROUTER_FOLDER

    if router is None or router is False:
        return
    if isinstance(router, str) and router == "auto":
        # a package's router was fitted for base + that one memory: it applies to no other mixture
        shipped = [f / ROUTER_FOLDER for f in folders if f is not None and (f / ROUTER_FOLDER / ROUTER_CONFIG).is_file()]
        if not shipped:
            return
        if len(model.members) != 2:
            warnings.warn(f"the router in {shipped[0]} weighs the base and that one memory: not used in a mixture of "
                          f"{len(model.members) - 1} memories (the fixed weights are)", UserWarning, stacklevel=3)
            return
        try:
            model.set_router(load_router(shipped[0]))
        except RouterMismatchError as e:
            # the memory still applies at its fixed weight (e.g. the family's other base); its router does not
            warnings.warn(f"the router in {shipped[0]} is not used, the fixed weights are: {e}", UserWarning, stacklevel=3)
        return
    model.set_router(load_router(router) if isinstance(router, (str, os.PathLike)) else router)


def save_composition(composed: ComposedForCausalLM, folder: str | os.PathLike) -> Path:
    """`composed.save_pretrained(folder)`: config.json with references (absolute folders, Hub ids,
    exact registry versions with their digests), generation_config.json and the tokenizer."""
    return composed.save_pretrained(folder)


def load_composition(folder: str | os.PathLike, **kwargs: Any) -> ComposedForCausalLM:
    """`ComposedForCausalLM.from_pretrained(folder, **kwargs)` (keywords: dtype, device_map, registry,
    force, trust, public_keys)."""
    return ComposedForCausalLM.from_pretrained(folder, trust_remote_code=False, **kwargs)
