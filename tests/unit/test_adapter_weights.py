"""Issue 23, item 5: a PEFT adapter memory loads strictly, like every other member. Its base refuses
missing tensors, and its adapter_model.safetensors must hold every LoRA tensor the config implies:
peft fills missing ones with a (random, with init_lora_weights=false) init and only warns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_package
from memreg.compose import compose
from memreg.compose.sources import AdapterWeightsMismatchError
from memreg.registry.errors import SafetensorsError, WeightsMismatchError

pytest.importorskip("peft")


@pytest.fixture
def adapter(tmp_path, tiny_tokenizer_dir) -> Path:
    """A real LoRA adapter (random, not the identity) on a real tiny GPT-2 saved beside it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = make_package(tmp_path / "mem-base", tiny_tokenizer_dir, seed=3)
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=4, target_modules=["c_attn", "c_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def _edit(path: Path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def _attach(adapter: Path, tiny_package: Path):
    return compose(str(tiny_package), [str(adapter)], [0.5])


def _lora_keys(adapter: Path) -> list[str]:
    return sorted(load_file(adapter / "adapter_model.safetensors"))


def test_an_empty_adapter_file_is_refused_not_randomly_initialised(adapter, tiny_package):
    keys = _lora_keys(adapter)
    assert len(keys) == 6  # lora_A and lora_B of attn.c_attn, attn.c_proj and mlp.c_proj
    _edit(adapter / "adapter_model.safetensors", lambda t: t.clear())
    with pytest.raises(AdapterWeightsMismatchError, match=r"missing") as info:
        _attach(adapter, tiny_package)
    assert "adapter_model.safetensors" in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, WeightsMismatchError)


def test_one_missing_lora_tensor_is_named(adapter, tiny_package):
    gone = _lora_keys(adapter)[1]
    _edit(adapter / "adapter_model.safetensors", lambda t: t.pop(gone))
    with pytest.raises(AdapterWeightsMismatchError, match=rf"1 missing \({gone.replace('.', '[.]')}\)"):
        _attach(adapter, tiny_package)


def test_a_lora_tensor_for_no_module_is_refused(adapter, tiny_package):
    """peft drops a tensor it has no module for: an adapter saved for another model is not this one."""
    extra = "base_model.model.transformer.h.7.attn.c_attn.lora_A.weight"
    _edit(adapter / "adapter_model.safetensors", lambda t: t.update({extra: torch.zeros(4, 32)}))
    with pytest.raises(AdapterWeightsMismatchError, match=rf"unexpected \({extra.replace('.', '[.]')}\)"):
        _attach(adapter, tiny_package)


def test_a_truncated_adapter_file_is_a_named_error(adapter, tiny_package):
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(SafetensorsError, match="adapter_model.safetensors"):
        _attach(adapter, tiny_package)


def test_the_adapters_base_loads_strictly(adapter, tiny_package):
    """A tensor missing from the base folder the adapter names is refused, as for any member."""
    _edit(adapter.parent / "mem-base" / "model.safetensors", lambda t: t.pop("transformer.h.0.attn.c_attn.weight"))
    with pytest.raises(WeightsMismatchError, match=r"missing.*transformer\.h\.0\.attn\.c_attn\.weight"):
        _attach(adapter, tiny_package)


@torch.no_grad()
def test_a_complete_adapter_still_loads_merged(adapter, tiny_package):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 17, 42, 99, 250, 3]])
    got = compose(str(tiny_package), [str(adapter)], [1.0])(ids).logits
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter.parent / "mem-base"),
                                       str(adapter)).merge_and_unload()
    torch.testing.assert_close(got, torch.log_softmax(merged(ids).logits, -1), rtol=1e-4, atol=1e-4)
