"""Loading Hugging Face causal LMs and tokenizers the way memreg always does.

A model reference is a Hugging Face folder or id, or a `.gguf` file: the latter is converted once
into a folder under $MEMREG_HOME (memreg.gguf.resolve_model_ref) and loaded from there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memreg.gguf import resolve_model_ref

__all__ = ["ModelSummary", "load_causal_lm", "load_tokenizer", "resolve_model_ref", "summarize_model"]


def load_causal_lm(ref: str | os.PathLike, *, dtype: Any = None, device: Any = None, strict: bool = False):
    """`AutoModelForCausalLM.from_pretrained(ref)`: safetensors only, never remote code, float32
    unless `dtype` says otherwise. `ref` may be a `.gguf` file.

    transformers 5 loads a checkpoint in the dtype it was saved in; the shipped bases are stored
    in float16 to stay small, and float16 matmuls on a CPU are both slow and lossy.

    strict: a missing, unexpected or mismatched tensor is a `WeightsMismatchError` (memories are
    loaded so). transformers would fill missing ones with a random init and only log it, which the
    CLI hides (TRANSFORMERS_VERBOSITY=error).
    """
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        resolve_model_ref(ref), use_safetensors=True, trust_remote_code=False, dtype=dtype or torch.float32,
        output_loading_info=True,
    )
    if strict:
        _check_loading_info(ref, info)
    if device is not None:
        model = model.to(device)
    return model.eval()


def _check_loading_info(ref: Any, info: dict[str, Any]) -> None:
    from memreg.core.errors import WeightsMismatchError

    if report := loading_report(info):
        raise WeightsMismatchError(f"{ref}: the weights do not match config.json: {report}; refused "
                                   "rather than filled with a random init: re-save the model with save_pretrained")


def loading_report(info: dict[str, Any]) -> str:
    """What `from_pretrained(..., output_loading_info=True)` left out or could not fit, or ''."""
    groups = (("missing_keys", "missing"), ("unexpected_keys", "unexpected"), ("mismatched_keys", "wrong shape"))
    return mismatch_report({what: [str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or ()]
                            for key, what in groups})


def mismatch_report(groups: dict[str, Any]) -> str:
    """'2 missing (a, b); 1 unexpected (c)': each non-empty group of tensor names, its first three named."""
    parts = []
    for what, names in groups.items():
        if keys := sorted(names):
            parts.append(f"{len(keys)} {what} ({', '.join(keys[:3])}{', …' if len(keys) > 3 else ''})")
    return "; ".join(parts)


def context_length(config: Any) -> int | None:
    """The longest sequence a model's position table holds (GPT-2 names it n_positions), or None."""
    n = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return int(n) if n else None


def load_tokenizer(ref: str | os.PathLike):
    """`AutoTokenizer.from_pretrained(ref)`, never remote code; `ref` may be a `.gguf` file."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_ref(ref), trust_remote_code=False)


@dataclass(frozen=True)
class ModelSummary:
    """What a model folder holds, read from config.json and the safetensors headers (no torch)."""

    folder: Path
    architecture: str  # e.g. "LlamaForCausalLM"
    model_type: str  # e.g. "llama"
    parameters: int  # distinct parameters: a tied output embedding is counted once
    tie_word_embeddings: bool
    vocab_size: int | None  # embedding rows


def summarize_model(folder: str | os.PathLike) -> ModelSummary:
    """Describe a Hugging Face model folder without loading its weights."""
    root = Path(folder)
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{root} has no readable config.json ({exc}): it is not a model folder") from None
    text = config.get("text_config") or config
    architectures = config.get("architectures") or ["?"]
    return ModelSummary(
        folder=root,
        architecture=str(architectures[0]),
        model_type=str(config.get("model_type", "?")),
        parameters=sum(_safetensors_numel(f) for f in sorted(root.glob("*.safetensors"))),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        vocab_size=text.get("vocab_size"),
    )


def _safetensors_numel(path: Path) -> int:
    """Elements in one safetensors file, from its checked header (a bad one is a SafetensorsError)."""
    from memreg.registry.package import safetensors_header

    total = 0
    for info in safetensors_header(path).values():
        count = 1
        for dim in info["shape"]:
            count *= dim
        total += count
    return total
