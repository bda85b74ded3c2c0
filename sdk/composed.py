"""`ComposedLM`: a base causal LM and its memories, read as one causal LM.

Every member reads the same ids with its own KV cache; the forward pass returns the mixture's
normalised log-probabilities as `logits` (B, T, V), mixed in log space by `memreg.mixture`.
Members with more embedding rows than the tokenizer has tokens are sliced to `vocab_size`
before the log-softmax.

Generation is memreg's own loop (`memreg.generation`), not transformers' `GenerationMixin`:
transformers' generate reaches into model internals that move between releases (the cache
keyword became `cache` in 5.x, `cache_position` came and went, cache classes are rebuilt), while
this wrapper only needs each member's public forward. The loop reuses transformers' logits
processors and streamers, and takes `generate`'s usual keyword arguments.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memreg.mixture import check_weights, mix_log_probs


@dataclass
class ComposedCache:
    """One KV cache per distinct member (base first), plus the attention mask seen so far (B, S)."""

    members: list[Any]
    attention_mask: torch.Tensor

    def get_seq_length(self) -> int:
        return int(self.attention_mask.shape[1])

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` of every member cache (beam search); index: (B',) long."""
        self.attention_mask = self.attention_mask.index_select(0, index.to(self.attention_mask.device))
        self.members = [_reorder_member_cache(c, index) for c in self.members]


def _reorder_member_cache(cache: Any, index: torch.Tensor) -> Any:
    if cache is None:
        return None
    if hasattr(cache, "reorder_cache"):  # transformers Cache objects
        cache.reorder_cache(index)
        return cache
    # legacy tuple-of-tuples caches: ((k, v), ...) with batch first
    return tuple(tuple(t.index_select(0, index.to(t.device)) for t in layer) for layer in cache)


@dataclass
class ComposedOutput:
    """What `ComposedLM.forward` returns; `logits` are the mixture's log-probabilities (B, T, V)."""

    logits: torch.Tensor
    cache: ComposedCache | None = None
    loss: torch.Tensor | None = None

    @property
    def past_key_values(self) -> ComposedCache | None:  # the pre-5.x name
        return self.cache

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class ComposedLM(nn.Module):
    """A base LM mixed with memories: p = (1 - sum w) p_base + sum_i w_i p_mem_i.

    `members` are distinct modules, base first; `member_of_memory[i]` says which member memory i is
    (the same memory composed twice is one module, its weights added: the mixture is the same).
    """

    # forward's `logits` are already normalised log-probabilities (scorers skip a log-softmax)
    outputs_log_probs = True

    def __init__(
        self,
        base: nn.Module,
        memories: Sequence[nn.Module],
        weights: Sequence[float],
        *,
        vocab_size: int | None = None,
        tokenizer: Any = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        weights = check_weights(weights)
        if len(weights) != len(memories):
            raise ValueError(f"{len(memories)} memories but {len(weights)} weights: give one weight per memory")
        distinct: list[nn.Module] = [base]
        member_of_memory: list[int] = []
        for m in memories:
            for j, d in enumerate(distinct):
                if d is m:
                    break
            else:
                distinct.append(m)
                j = len(distinct) - 1
            member_of_memory.append(j)
        self.members = nn.ModuleList(distinct)
        self.member_of_memory = member_of_memory
        self.weights = list(weights)
        self.names = list(names) if names is not None else [f"memory {i}" for i in range(len(memories))]
        self.tokenizer = tokenizer
        rows = [_embedding_rows(m) for m in distinct]
        self.vocab_size = int(vocab_size) if vocab_size is not None else min(rows)
        if any(r < self.vocab_size for r in rows):
            raise ValueError(f"a member has {min(rows)} embedding rows, fewer than the vocabulary's {self.vocab_size}")
        self._forward_keys = [_forward_keys(m) for m in distinct]

    # ------------------------------------------------------------------ mixture weights
    @property
    def member_weights(self) -> list[float]:
        """Weight of each distinct member except the base (duplicates added)."""
        out = [0.0] * (len(self.members) - 1)
        for j, w in zip(self.member_of_memory, self.weights):
            out[j - 1] += w
        return out

    def per_memory(self, member_weights: Sequence[float]) -> list[float]:
        """One weight per distinct member (base excluded) -> one per memory: a memory composed
        twice splits its member's share, so the mixture is the same."""
        counts = [self.member_of_memory.count(j) for j in range(len(self.members))]
        return [member_weights[j - 1] / counts[j] for j in self.member_of_memory]

    def set_weights(self, weights: Sequence[float]) -> None:
        weights = check_weights(weights)
        if len(weights) != len(self.weights):
            raise ValueError(f"{len(self.weights)} memories but {len(weights)} weights: give one weight per memory")
        self.weights = list(weights)

    @property
    def base(self) -> nn.Module:
        return self.members[0]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # What transformers' pipelines ask of a model before they call generate(): the base's config and
    # generation defaults stand for the composition (the members share a tokenizer).
    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def generation_config(self) -> Any:
        from transformers import GenerationConfig

        return getattr(self.base, "generation_config", None) or GenerationConfig.from_model_config(self.base.config)

    def can_generate(self) -> bool:
        return True

    # A composition is shared as the references it was built from (memreg-composition.json), not weights.
    sources: dict | None = None

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        from memreg.compose import save_composition

        return save_composition(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs: Any) -> "ComposedLM":
        from memreg.compose import load_composition

        return load_composition(folder, **kwargs)

    # ------------------------------------------------------------------ forward
    def member_log_probs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: ComposedCache | None = None,
        *,
        use_cache: bool = False,
    ) -> tuple[list[torch.Tensor], ComposedCache | None]:
        """Normalised log-probabilities of every distinct member, (B, T, V) each, and the new cache."""
        attention_mask, position_ids = self.mask_and_positions(input_ids, attention_mask, cache)
        out_lp: list[torch.Tensor] = []
        new_caches: list[Any] = []
        keep_cache = use_cache or cache is not None
        for j in range(len(self.members)):
            member_cache = cache.members[j] if cache is not None else None
            lp, new_member_cache = self.member_forward(j, input_ids, attention_mask, position_ids, member_cache,
                                                       use_cache=keep_cache)
            out_lp.append(lp)
            if keep_cache:
                new_caches.append(new_member_cache)
        out_lp = same_dtype(out_lp)
        new = ComposedCache(new_caches, attention_mask) if keep_cache else None
        return out_lp, new

    def mask_and_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                           cache: ComposedCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask over past + T positions (B, past + T) and the new tokens' positions (B, T)."""
        b, t = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(b, past + t, dtype=torch.long, device=input_ids.device)
        elif attention_mask.shape[1] == t and past:
            attention_mask = torch.cat([cache.attention_mask.to(attention_mask.device), attention_mask], dim=1)
        if attention_mask.shape[1] != past + t:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions, expected {past + t}")
        # left padding: position = number of real tokens before, as transformers' generate does
        return attention_mask, (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]

    def member_forward(
        self, j: int, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        member_cache: Any = None, *, use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """One member's normalised log-probabilities (B, T, V) and its new cache (None without use_cache).

        attention_mask covers past + T positions, position_ids (B, T) the new ones."""
        keys = self._forward_keys[j]
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}
        if "position_ids" in keys:
            kwargs["position_ids"] = position_ids
        if use_cache and member_cache is not None:
            kwargs["cache" if "cache" in keys else "past_key_values"] = member_cache
        out = self.members[j](**kwargs)
        logits = out.logits[..., : self.vocab_size]  # (B, T, V): padded rows sliced off first
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if not use_cache:
            return torch.log_softmax(logits, dim=-1), None
        # transformers 5 names it `cache`, 4.x `past_key_values`
        has_new_name = "cache" in getattr(type(out), "__dataclass_fields__", {})
        return torch.log_softmax(logits, dim=-1), (out.cache if has_new_name else getattr(out, "past_key_values", None))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: ComposedCache | None = None,
        *,
        past_key_values: ComposedCache | None = None,
        use_cache: bool = False,
        labels: torch.Tensor | None = None,
        **unused: Any,
    ) -> ComposedOutput:
        """input_ids (B, T); attention_mask (B, past + T) or (B, T); returns log-probs (B, T, V).

        With a cache, feed only the new ids; the mask may cover just them or everything so far.
        """
        cache = cache if cache is not None else past_key_values
        lps, new_cache = self.member_log_probs(input_ids, attention_mask, cache, use_cache=use_cache)
        logp = mix_log_probs(lps, self.member_weights)
        loss = None
        if labels is not None:
            shift = logp[:, :-1].reshape(-1, logp.shape[-1])
            loss = torch.nn.functional.nll_loss(shift, labels[:, 1:].reshape(-1).to(shift.device), ignore_index=-100)
        return ComposedOutput(logits=logp, cache=new_cache, loss=loss)

    # ------------------------------------------------------------------ generation
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        """Greedy, sampling and beam search with transformers' decoding options (generation_config=,
        repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_new_tokens, stop_strings with
        tokenizer=, stopping_criteria, streamer, …); see `memreg.generation.generate`."""
        from memreg.generation import generate

        return generate(self, input_ids, attention_mask, **kwargs)


def same_dtype(log_probs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Members' log-probabilities in their widest dtype (e.g. a float64 memory on a float32 base)."""
    widest = log_probs[0].dtype
    for lp in log_probs[1:]:
        widest = torch.promote_types(widest, lp.dtype)
    return [lp.to(widest) for lp in log_probs]


def _embedding_rows(model: nn.Module) -> int:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is not None:
        return int(out.weight.shape[0])
    return int(model.config.vocab_size)


def _forward_keys(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {"position_ids", "past_key_values"}
