"""Tiny real models for the training tests: a byte-level BPE tokenizer trained on licence texts
that ship with the machine, and random GPT-2 / Llama / Qwen2 / Mistral configs saved to folders."""

from __future__ import annotations

from pathlib import Path

from licences import licence_files

# the licences the training tests' tokenizers are trained on and their default corpus
TEXTS = licence_files(["Apache-2.0", "BSD", "Artistic", "MPL-2.0", "GPL-2", "LGPL-2.1"])
VOCAB = 400


def make_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(p) for p in TEXTS], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return fast


def make_model(folder: Path, family: str = "gpt2", *, tokenizer_from: Path, seed: int = 0, hidden: int = 32,
               layers: int = 2, positions: int = 128):
    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, MistralConfig,
                              Qwen2Config)

    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    common = dict(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    if family == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=layers, n_head=2, n_positions=positions, **common)
    else:
        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
        cfg = cls(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=positions, tie_word_embeddings=False, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return model


def make_model_of_another_tokenizer(root: Path) -> Path:
    """A tiny GPT-2 whose tokenizer (another BPE, `<pad>` special) is not the shared one: root/other-model."""
    from tokenizers import Tokenizer, models as tm, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tm.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train([str(p) for p in TEXTS], trainers.BpeTrainer(vocab_size=350, special_tokens=["<pad>"],
                                                                      show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<pad>").save_pretrained(root / "other")
    make_model(root / "other-model", "gpt2", tokenizer_from=root / "other")
    return root / "other-model"

def make_teacher_and_init(root: Path) -> Path:
    """root/tok, root/teacher (GPT-2, width 48) and root/init (GPT-2, width 32): one tokenizer."""
    make_tokenizer(root / "tok")
    make_model(root / "teacher", "gpt2", tokenizer_from=root / "tok", hidden=48, seed=1)
    make_model(root / "init", "gpt2", tokenizer_from=root / "tok", seed=2)
    return root


def _single_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass
    yield
    torch.set_num_threads(before)


def single_thread_fixture():
    import pytest

    return pytest.fixture(autouse=True, scope="module")(_single_thread)
