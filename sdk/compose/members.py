"""One member of a composition (the base or a memory): what its forward takes, how many rows its
output embedding has, how far its position table reaches, and one step of its normalised
log-probabilities. Everything here reads one transformers causal LM; nothing knows the mixture.

transformers 5 names the cache keyword `cache`, 4.x `past_key_values`: each member is called with
the name its own forward declares.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# forward arguments handed to a member only where its forward declares them
OPTIONAL_INPUTS = ("position_ids", "token_type_ids", "output_attentions", "output_hidden_states", "logits_to_keep")


# transformers 5 models take these through **kwargs (TransformersKwargs) rather than by name
_THROUGH_KWARGS = {"output_attentions", "output_hidden_states"}


def forward_keys(model: nn.Module) -> frozenset[str]:
    """The keyword arguments `model.forward` takes by name, plus the output flags a **kwargs
    catch-all takes in transformers 5 (nothing else is sent into a catch-all: it might drop it)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return frozenset({"position_ids", "past_key_values"})
    named = {k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        named |= _THROUGH_KWARGS
    return frozenset(named)


def cache_keyword(keys: frozenset[str]) -> str:
    return "cache" if "cache" in keys else "past_key_values"


def embedding_rows(model: nn.Module) -> int:
    """Rows of the output embedding (a resized model may have more than its tokenizer has tokens)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is not None:
        return int(out.weight.shape[0])
    return int(model.config.vocab_size)


def context_length(model: nn.Module) -> int | None:
    """The longest sequence the member's position table holds (GPT-2: n_positions), or None."""
    from memreg.models import context_length as from_config

    return from_config(getattr(model, "config", None))


def new_cache(model: nn.Module) -> Any:
    """An empty dynamic KV cache for one member (built from its config where the version takes one,
    so sliding-window layers are laid out as the member expects)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers 4.x: no config argument
        return DynamicCache()


@dataclass
class MemberStep:
    """One member's answer: normalised log-probabilities (B, T', V) and what it returned beside them."""

    log_probs: torch.Tensor
    cache: Any = None
    attentions: Any = None
    hidden_states: Any = None


def member_step(model: nn.Module, keys: frozenset[str], vocab_size: int, input_ids: torch.Tensor, *,
                attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, cache: Any = None,
                use_cache: bool = False, extra: dict[str, Any] | None = None) -> MemberStep:
    """Run one member on `input_ids` (B, T) after what its `cache` holds; `extra` are the optional
    inputs of OPTIONAL_INPUTS, each passed only if this member's forward declares it."""
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}
    if position_ids is not None and "position_ids" in keys:
        kwargs["position_ids"] = position_ids
    for name, value in (extra or {}).items():
        if value is not None and name in keys:
            kwargs[name] = value
    if cache is not None:
        kwargs[cache_keyword(keys)] = cache
    out = model(**kwargs)
    logits = out.logits
    keep = (extra or {}).get("logits_to_keep")
    if keep and "logits_to_keep" not in keys and logits.shape[1] > keep:  # the member returned every position
        logits = logits[:, -keep:]
    logits = logits[..., :vocab_size]  # padded embedding rows sliced off before normalising
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    new = getattr(out, "cache", None) if "cache" in keys else getattr(out, "past_key_values", None)
    return MemberStep(torch.log_softmax(logits, dim=-1), new if use_cache else None,
                      getattr(out, "attentions", None), getattr(out, "hidden_states", None))


def widest(log_probs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Members' log-probabilities in their widest dtype (e.g. a float64 memory on a float32 base)."""
    dtype = log_probs[0].dtype
    for lp in log_probs[1:]:
        dtype = torch.promote_types(dtype, lp.dtype)
    return [lp.to(dtype) for lp in log_probs]
