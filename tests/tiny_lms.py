"""Tiny real transformers LMs and a BPE tokenizer trained on text that ships with the machine.

Used by the composition tests. Models are random (seeded) but real GPT-2 / Llama modules; the
initialiser range is raised so that their next-token distributions differ visibly.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import torch

LICENSES = sorted(p for p in glob.glob("/usr/share/common-licenses/*") if Path(p).is_file())
STDLIB = sorted(glob.glob(str(Path(json.__file__).parent.parent / "*.py")))[:40]


def real_text(paths: list[str], limit: int = 400_000) -> list[str]:
    out, size = [], 0
    for p in paths:
        t = Path(p).read_text(errors="replace")
        out.append(t)
        size += len(t)
        if size > limit:
            break
    return out


def train_tokenizer(texts: list[str], vocab_size: int = 320, pad: str = "<pad>"):
    """A byte-level BPE with '<|endoftext|>' = 0 and `pad` = 1, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", pad],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # model_input_names as GPT-2's and Llama's tokenizers have them: transformers 4.x's generic class
    # would also return token_type_ids, which a causal LM's tokenizer never does
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token=pad,
                                   model_input_names=["input_ids", "attention_mask"])


def gpt2(vocab: int, seed: int, *, layers: int = 2, width: int = 32, rows: int | None = None):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=rows or vocab, n_positions=256, n_embd=width, n_layer=layers, n_head=2,
        bos_token_id=0, eos_token_id=0, pad_token_id=1, initializer_range=0.3,
    )
    return GPT2LMHeadModel(cfg).double().eval()


def llama(vocab: int, seed: int, *, rows: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=rows or vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=0, pad_token_id=1, initializer_range=0.3, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).double().eval()


def save_package(model, tokenizer, folder: Path, *, recommended_weight: float | None = None, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if recommended_weight is not None or name is not None:
        from memreg.schemas import Metrics, PackageCard

        card = PackageCard(name=name, version="1.0.0" if name else None,
                           metrics=Metrics(recommended_weight=recommended_weight))
        (folder / "memreg.json").write_text(card.model_dump_json(indent=2))
    return folder
