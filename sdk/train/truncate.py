"""`--init MODEL --init-layers N`: start the memory decoder from the first N transformer blocks of
MODEL, with its embeddings, final norm and LM head (tied embeddings stay tied).

`truncate_layers` cuts a loaded causal LM in place; `write_truncated_init` loads, cuts and saves a
standard Hugging Face folder (safetensors + tokenizer) that `AutoModelForCausalLM` loads as is.
Blocks keep their weights and their `layer_idx`; the config's layer count and its per-layer lists
(`layer_types`, ...) are cut to match, so block i of the copy is block i of the source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from memreg.core.errors import InvalidTrainSettingError, UnsupportedArchitectureError

__all__ = ["SUPPORTED_FAMILIES", "find_blocks", "truncate_layers", "write_truncated_init"]

SUPPORTED_FAMILIES = "GPT-2, Llama/SmolLM2, Qwen2, Mistral"

# Where the decoder blocks live, by family; other models fall back to the one ModuleList whose
# length is the config's layer count.
_KNOWN_PATHS = ("transformer.h", "model.layers")

# Config fields holding one entry per block (transformers 5: `layer_types` of Llama/Qwen2/Mistral
# style configs, "full_attention" / "sliding_attention"; `no_rope_layers` of SmolLM3-style configs).
PER_LAYER_FIELDS = ("layer_types", "no_rope_layers")


def _num_layers(config: Any) -> int | None:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _get(root: Any, dotted: str) -> Any:
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _name(model: Any) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "name_or_path", "") or getattr(config, "model_type", "") or type(model).__name__)


def find_blocks(model: Any):
    """The `nn.ModuleList` of the decoder blocks (GPT-2: `transformer.h`; Llama/Qwen2/Mistral:
    `model.layers`; otherwise the only ModuleList as long as the config's layer count)."""
    from torch import nn

    count = _num_layers(getattr(model, "config", None))
    unsupported = UnsupportedArchitectureError(
        f"cannot find the transformer blocks of {type(model).__name__}; --init-layers supports {SUPPORTED_FAMILIES}"
    )
    if count is None:
        raise unsupported
    for path in _KNOWN_PATHS:
        blocks = _get(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) == count:
            return blocks
    found = [m for _, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if len(found) != 1:
        raise unsupported
    return found[0]


def truncate_layers(model: Any, n: int, *, name: str | None = None) -> Any:
    """Keep blocks [0, n) of `model` (in place) and update its config; returns `model`.

    n must be 1..L (L = the model's block count; n == L keeps every block). `name` only labels the
    error message (default: the config's `name_or_path`).
    """
    blocks = find_blocks(model)
    total = len(blocks)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
        raise InvalidTrainSettingError(
            f"--init-layers {n}: {name or _name(model)} has {total} blocks; use 1..{total}"
        )
    del blocks[n:]
    _truncate_config(model.config, n, total)
    return model


def _truncate_config(config: Any, n: int, total: int) -> None:
    # GPT-2 maps num_hidden_layers -> n_layer; every int layer count equal to L is cut to n.
    for field in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, field, None) == total:
            setattr(config, field, n)
    # transformers 5 checks that len(layer_types) == num_hidden_layers when the config is loaded.
    for field in PER_LAYER_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, (list, tuple)) and len(value) == total:
            setattr(config, field, type(value)(value[:n]))


def count_parameters(model: Any) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def write_truncated_init(ref: str, n: int, out: Path) -> dict[str, Any]:
    """Load `ref` (float32), keep its first `n` blocks, save model + tokenizer to `out` (replacing it).

    Returns {"source": ref, "layers": n, "source_layers": L, "parameters": count}. The layer count
    is checked against the config before the weights are loaded.
    """
    from transformers import AutoConfig

    from memreg.models import load_causal_lm, load_tokenizer, resolve_model_ref
    from memreg.train.packaging import replace_folder, save_model_folder

    ref = resolve_model_ref(ref)  # a .gguf file: its converted folder
    config = AutoConfig.from_pretrained(os.fspath(ref), trust_remote_code=False)
    total = _num_layers(config)
    if total is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total):
        raise InvalidTrainSettingError(f"--init-layers {n}: {ref} has {total} blocks; use 1..{total}")
    model = load_causal_lm(ref)
    source_layers = len(find_blocks(model))
    truncate_layers(model, n, name=str(ref))
    tokenizer = load_tokenizer(ref)

    out = Path(out)
    replace_folder(save_model_folder(out, model, tokenizer), out)
    return {"source": str(ref), "layers": n, "source_layers": source_layers,
            "parameters": count_parameters(model)}
