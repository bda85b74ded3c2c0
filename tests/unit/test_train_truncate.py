"""`--init MODEL --init-layers N`: the first N blocks of MODEL plus its embeddings, final norm and LM
head, saved as a folder that `AutoModelForCausalLM` loads; tied embeddings stay tied."""

from __future__ import annotations

import pytest

import torch

from train_helpers import make_tokenizer, single_thread_fixture  # noqa: E402

from memreg.train.errors import InvalidTrainSettingError, UnsupportedArchitectureError  # noqa: E402
from memreg.train.truncate import truncate_layers, write_truncated_init  # noqa: E402

_one_thread = single_thread_fixture()

LAYERS = 3
KEEP = 2
FAMILIES = ["gpt2", "llama", "qwen2", "mistral"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    make_tokenizer(folder)
    return folder


def _config(family: str, vocab: int, *, tied: bool, layers: int = LAYERS, sliding: bool = False):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=layers, n_head=2, n_positions=64,
                          tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    extra = {}
    if sliding and family == "qwen2":  # layer 0 full attention, the others a window of 4
        extra = dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)
    elif sliding and family == "mistral":
        extra = dict(sliding_window=4)
    return cls(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
               tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0, **extra)


def _source(folder, tok_dir, family: str, *, tied: bool, sliding: bool = False, seed: int = 0):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family, len(tok), tied=tied, sliding=sliding)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return model


def _parts(model):
    """(blocks, embeddings, final norm, lm head) of the four families."""
    if model.config.model_type == "gpt2":
        return model.transformer.h, model.transformer.wte, model.transformer.ln_f, model.lm_head
    return model.model.layers, model.model.embed_tokens, model.model.norm, model.lm_head


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


CASES = [(f, t, False) for f in FAMILIES for t in (True, False)] + [("qwen2", False, True), ("mistral", True, True)]


@pytest.mark.parametrize("family,tied,sliding", CASES,
                         ids=[f"{f}-{'tied' if t else 'untied'}{'-sliding' if s else ''}" for f, t, s in CASES])
def test_truncated_folder_is_the_first_blocks(tmp_path, tok_dir, family, tied, sliding):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, out = tmp_path / "src", tmp_path / "init"
    source = _source(src_dir, tok_dir, family, tied=tied, sliding=sliding)
    info = write_truncated_init(str(src_dir), KEEP, out)

    got = AutoModelForCausalLM.from_pretrained(out).eval()
    assert info == {"source": str(src_dir), "layers": KEEP, "source_layers": LAYERS,
                    "parameters": sum(p.numel() for p in got.parameters())}
    assert got.config.num_hidden_layers == KEEP
    if hasattr(source.config, "layer_types") and source.config.layer_types is not None:
        assert got.config.layer_types == source.config.layer_types[:KEEP]
    if sliding and family == "qwen2":
        assert got.config.layer_types == ["full_attention", "sliding_attention"]

    s_blocks, s_emb, s_norm, s_head = _parts(source)
    g_blocks, g_emb, g_norm, g_head = _parts(got)
    assert len(g_blocks) == KEEP
    for i in range(KEEP):
        _assert_same_state(s_blocks[i], g_blocks[i])
    _assert_same_state(s_emb, g_emb)
    _assert_same_state(s_norm, g_norm)
    assert torch.equal(s_head.weight, g_head.weight)
    if family == "gpt2":
        assert torch.equal(source.transformer.wpe.weight, got.transformer.wpe.weight)

    assert got.config.tie_word_embeddings is tied
    assert (got.lm_head.weight is got.get_input_embeddings().weight) is tied
    assert (got.lm_head.weight.data_ptr() == got.get_input_embeddings().weight.data_ptr()) is tied

    # The copy's logits are the source's after KEEP blocks, through the source's norm and head.
    tok = AutoTokenizer.from_pretrained(out)
    text = "Licensed under the Apache License, Version 2.0; you may not use this file except in compliance."
    ids = torch.tensor([tok(t)["input_ids"][:16] for t in (text, text[::-1])])  # longer than the window
    assert ids.shape == (2, 16)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = source(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        assert len(hidden) == LAYERS + 1
        expected = s_head(s_norm(hidden[KEEP]))
        logits = got(ids, attention_mask=mask).logits
    assert torch.equal(logits, expected)


def test_all_layers_is_a_copy_and_out_is_replaced(tmp_path, tok_dir):
    from transformers import AutoModelForCausalLM

    src_dir, out = tmp_path / "src", tmp_path / "init"
    source = _source(src_dir, tok_dir, "llama", tied=True)
    write_truncated_init(str(src_dir), 1, out)
    (out / "stale.txt").write_text("old")
    info = write_truncated_init(str(src_dir), LAYERS, out)
    assert info["layers"] == info["source_layers"] == LAYERS
    assert not (out / "stale.txt").exists()
    assert not any(p.name.startswith(".init") for p in tmp_path.iterdir())
    got = AutoModelForCausalLM.from_pretrained(out)
    _assert_same_state(source, got)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("n", [0, LAYERS + 1, -1])
def test_out_of_range_names_the_range(tmp_path, tok_dir, n):
    src_dir = tmp_path / "src"
    source = _source(src_dir, tok_dir, "gpt2", tied=True)
    message = rf"--init-layers {n}: .* has {LAYERS} blocks; use 1\.\.{LAYERS}"
    with pytest.raises(InvalidTrainSettingError, match=message):
        write_truncated_init(str(src_dir), n, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(InvalidTrainSettingError, match=rf"use 1\.\.{LAYERS}"):
        truncate_layers(source, n)
    assert len(source.transformer.h) == LAYERS and source.config.n_layer == LAYERS


def test_truncate_in_place_and_unsupported_model():
    from torch import nn
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_config("qwen2", 64, tied=False, layers=4, sliding=True))
    first = model.model.layers[0]
    assert truncate_layers(model, 3) is model
    assert len(model.model.layers) == 3 and model.model.layers[0] is first
    assert model.config.num_hidden_layers == 3 and len(model.config.layer_types) == 3

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 2})()
            self.a, self.b = nn.ModuleList([nn.Linear(2, 2)] * 2), nn.ModuleList([nn.Linear(2, 2)] * 2)

    with pytest.raises(UnsupportedArchitectureError, match="GPT-2, Llama/SmolLM2, Qwen2, Mistral"):
        truncate_layers(Odd(), 1)
