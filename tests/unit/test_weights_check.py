"""Issue 11, finding 6: missing or unexpected tensors are an error at publish (checked against
config.json without torch) and when a memory is loaded, never a silent random init."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from memreg.registry import Registry
from memreg.registry.errors import WeightsMismatchError


def _rewrite(folder: Path, edit) -> Path:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


@pytest.fixture
def two_layers(tmp_path, tiny_tokenizer_dir) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=2, n_head=2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path / "mem"
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _drop_layer_1(t: dict) -> None:
    for k in [k for k in t if k.startswith("transformer.h.1.")]:
        del t[k]


@pytest.mark.parametrize("edit, named", [
    (lambda t: t.clear(), "no tensors"),
    (_drop_layer_1, "layer 1"),
], ids=["empty safetensors", "a missing layer"])
def test_publish_refuses_weights_that_do_not_fill_the_config(tmp_path, two_layers, edit, named):
    _rewrite(two_layers, edit)
    reg = Registry.init(str(tmp_path / "reg"))
    with pytest.raises(WeightsMismatchError, match=named) as info:
        reg.publish(two_layers, name="law", version="1.0.0")
    assert "model.safetensors" in str(info.value) or "config.json" in str(info.value)
    assert reg.versions("law") == []  # nothing published


def test_compose_refuses_a_folder_missing_a_tensor(two_layers, tiny_tokenizer_dir):
    from memreg.compose import compose

    _rewrite(two_layers, lambda t: t.pop("transformer.h.0.attn.c_attn.weight"))
    with pytest.raises(WeightsMismatchError, match=r"missing.*transformer\.h\.0\.attn\.c_attn\.weight"):
        compose(str(two_layers), [str(two_layers)], [0.5])  # the base loads; the memory is checked


def test_attach_from_a_registry_refuses_unexpected_tensors(tmp_path, two_layers):
    """One tensor too many passes the cheap publish check; loading it still refuses, never ignores."""
    from memreg.compose import compose

    base = tmp_path / "base"
    shutil.copytree(two_layers, base)
    _rewrite(two_layers, lambda t: t.update({"transformer.h.0.attn.extra": torch.zeros(3)}))
    reg = Registry.init(str(tmp_path / "reg"))
    reg.publish(two_layers, name="law", version="1.0.0")
    with pytest.raises(WeightsMismatchError, match=r"unexpected.*transformer\.h\.0\.attn\.extra"):
        compose(str(base), ["law@1.0.0"], [0.5], registry=reg)


def test_complete_weights_still_load(tmp_path, two_layers):
    from memreg.compose import compose

    reg = Registry.init(str(tmp_path / "reg"))
    reg.publish(two_layers, name="law", version="1.0.0")
    model = compose(str(two_layers), ["law@1.0.0"], [1.0], registry=reg)
    ids = torch.tensor([[1, 2, 3]])
    from memreg.models import load_causal_lm

    ref = torch.log_softmax(load_causal_lm(two_layers)(ids).logits, -1)
    torch.testing.assert_close(model(ids).logits, ref, rtol=1e-4, atol=1e-4)
