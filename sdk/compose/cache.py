"""`ComposedCache`: one KV cache per distinct member (base first), as one transformers `Cache`.

transformers' `generate` handles a model's cache through a few methods: the length so far, crop
(assisted decoding, stop-check undo), reorder (beam search), repeat / select rows (batch
expansion, contrastive-style selections). Each is applied to every member's own cache, so the
members stay in step. A composition's cache is never static or compiled: each member's layers
are its own, so the layer-wise API (`update`, per-layer masks) is not offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Cache

from memreg.compose.members import new_cache


class ComposedCache(Cache):
    """Each member's dynamic cache, kept in step: every operation applies to all of them."""

    is_compileable = False

    def __init__(self, members: Sequence[Any]) -> None:
        try:
            super().__init__(layers=[])
        except TypeError:  # transformers 4.x: Cache() takes no layers
            super().__init__()
        self.members = list(members)

    @classmethod
    def for_members(cls, modules: Sequence[torch.nn.Module]) -> "ComposedCache":
        return cls([new_cache(m) for m in modules])

    def __repr__(self) -> str:
        return f"ComposedCache({len(self.members)} members, {self.get_seq_length()} positions)"

    def __len__(self) -> int:
        return len(self.members)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.members[0].get_seq_length()) if self.members else 0

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # dynamic: grows without a bound of its own (the members' positions are the bound)

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    def update(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a ComposedCache is not updated layer by layer: each member updates its own cache "
                        "(ComposedCache.members[j]) in its forward")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for c in self.members:
            c.reorder_cache(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        for c in self.members:
            c.crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for c in self.members:
            c.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for c in self.members:
            c.batch_select_indices(indices)

    def reset(self) -> None:
        for c in self.members:
            c.reset()

    def activate_past_recording(self) -> None:  # so that a deferred stop check can roll every member back
        for c in self.members:
            if hasattr(c, "activate_past_recording"):
                c.activate_past_recording()

    @property
    def batch_size(self) -> int:
        return self.members[0].batch_size if self.members else 0

    @property
    def is_initialized(self) -> bool:
        return all(getattr(c, "is_initialized", True) for c in self.members)

    @property
    def is_croppable(self) -> bool:
        return all(getattr(c, "is_croppable", True) for c in self.members)

    # generate() asks these of a cache's layers: one full-attention "layer" stands for the members
    @property
    def is_sliding(self) -> list[bool]:
        return [False]

    @property
    def is_linear(self) -> list[bool]:
        return [False]

    @property
    def is_dummy(self) -> list[bool]:
        return [False]
