"""Loading Hugging Face causal LMs the way memreg always does."""

from __future__ import annotations

import os
from typing import Any


def load_causal_lm(ref: str | os.PathLike, *, dtype: Any = None, device: Any = None):
    """`AutoModelForCausalLM.from_pretrained(ref)`: safetensors only, never remote code, float32
    unless `dtype` says otherwise.

    transformers 5 loads a checkpoint in the dtype it was saved in; the shipped bases are stored
    in float16 to stay small, and float16 matmuls on a CPU are both slow and lossy.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.fspath(ref), use_safetensors=True, trust_remote_code=False, dtype=dtype or torch.float32
    )
    if device is not None:
        model = model.to(device)
    return model.eval()
