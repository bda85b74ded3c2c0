"""compose(): the mixture is exact, caches agree with full forwards, and tokenizers are checked first."""

from __future__ import annotations

import builtins
import io
import warnings
from pathlib import Path

import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import transformers  # noqa: F401  (a missing dependency must fail, not skip)

from tiny_lms import LICENSES, STDLIB, gpt2, llama, real_text, save_package, train_tokenizer

from memreg.compose import MissingWeightError, compose
from memreg.mixture import InvalidWeightsError
from memreg.registry.errors import TokenizerMismatchError


@pytest.fixture(scope="module")
def models(tok):
    v = len(tok)
    return {"base": gpt2(v, 0), "m1": llama(v, 1), "m2": gpt2(v, 2, layers=1)}


@pytest.fixture(scope="module")
def batch(tok):
    text = Path(LICENSES[0]).read_text()
    prompts = [text[200:260], text[1000:1030], text[3000:3100]]
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"][:, -24:], enc["attention_mask"][:, -24:]


def _ref_log_probs(model, ids, mask, vocab):
    """Each model's own normalised log-probs, float64 (the models are float64)."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[..., :vocab]
    return torch.log_softmax(logits.double(), -1)


def _rel(a, b, mask):
    keep = mask.bool()
    return float(((a - b).abs() / b.abs().clamp(min=1e-30))[keep].max())


@torch.no_grad()
def test_weight_one_is_the_memory_and_zero_the_base(tok, models, batch):
    ids, mask = batch
    v = len(tok)
    one = compose(models["base"], [(models["m1"], tok)], [1.0], tokenizer=tok)
    zero = compose(models["base"], [(models["m1"], tok)], [0.0], tokenizer=tok)
    assert _rel(one(ids, mask).logits, _ref_log_probs(models["m1"], ids, mask, v), mask) < 1e-5
    assert _rel(zero(ids, mask).logits, _ref_log_probs(models["base"], ids, mask, v), mask) < 1e-5


@torch.no_grad()
def test_two_memories_match_a_hand_computed_mixture(tok, models, batch):
    ids, mask = batch
    v = len(tok)
    c = compose(models["base"], [(models["m1"], tok), (models["m2"], tok)], [0.3, 0.2], tokenizer=tok)
    p = sum(w * _ref_log_probs(models[k], ids, mask, v).exp() for k, w in [("base", 0.5), ("m1", 0.3), ("m2", 0.2)])
    got = c(ids, mask).logits
    assert got.shape == (*ids.shape, v)
    assert _rel(got, p.log(), mask) < 1e-5
    # and it is a distribution
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(ids.shape, dtype=got.dtype))


@pytest.mark.slow  # a full forward per step
@torch.no_grad()
def test_incremental_decoding_with_caches_equals_full_forward(tok, models, batch):
    ids, mask = batch
    c = compose(models["base"], [(models["m1"], tok), (models["m2"], tok)], [0.4, 0.1], tokenizer=tok)
    full = c(ids, mask).logits
    out = c(ids[:, :10], mask[:, :10], use_cache=True)
    steps = [out.logits]
    cache = out.cache
    for t in range(10, ids.shape[1]):
        out = c(ids[:, t : t + 1], mask[:, : t + 1], cache=cache)
        cache = out.cache
        steps.append(out.logits)
    inc = torch.cat(steps, dim=1)
    assert _rel(inc, full, mask) < 1e-5


@torch.no_grad()
def test_same_memory_twice_is_loaded_once_and_mixes_as_one(tok, models, batch, tmp_path):
    ids, mask = batch
    folder = save_package(models["m1"], tok, tmp_path / "m1")
    base_dir = save_package(models["base"], tok, tmp_path / "base")
    twice = compose(base_dir, [folder, folder], [0.2, 0.3])
    once = compose(base_dir, [folder], [0.5])
    assert len(twice.members) == 2  # base + one shared memory
    assert _rel(twice(ids, mask).logits, once(ids, mask).logits, mask) < 1e-12


@torch.no_grad()
def test_padded_rows_memory_is_accepted_and_sliced(tok, models, batch, tmp_path):
    ids, mask = batch
    v = len(tok)
    padded = llama(v, 7, rows=v + 13)
    folder = save_package(padded, tok, tmp_path / "padded")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "resized" is compatible: no warning, no force
        c = compose(models["base"], [folder], [1.0], tokenizer=tok)
    got = c(ids, mask).logits
    assert got.shape[-1] == v
    assert _rel(got, _ref_log_probs(padded, ids, mask, v), mask) < 1e-5


def test_other_tokenizer_is_refused_before_any_weight_is_read(tok, models, tmp_path, monkeypatch):
    other = train_tokenizer(real_text(STDLIB), vocab_size=len(tok))
    folder = save_package(gpt2(len(other), 3), other, tmp_path / "python-mem")
    opened: list[str] = []
    real_open, real_io_open = builtins.open, io.open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    def refuse(*a, **k):
        raise AssertionError("weights were read")

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", lambda f, *a, **k: (opened.append(str(f)), real_io_open(f, *a, **k))[1])
    import safetensors
    import safetensors.torch

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(TokenizerMismatchError) as err:
        compose(models["base"], [folder], [0.3], tokenizer=tok)
    monkeypatch.undo()
    msg = str(err.value)
    assert "python-mem" in msg and "different tokenizer" in msg
    assert "\n" not in msg
    assert not [p for p in opened if p.endswith(".safetensors")]
    # force=True composes anyway, loudly
    with pytest.warns(UserWarning, match="FORCED"):
        c = compose(models["base"], [folder], [0.3], tokenizer=tok, force=True)
    assert len(c.members) == 2


def test_weights_given_are_checked_and_recommended_ones_scaled(tok, models, tmp_path):
    v = len(tok)
    a = save_package(llama(v, 11), tok, tmp_path / "a", recommended_weight=0.7)
    b = save_package(gpt2(v, 12, layers=1), tok, tmp_path / "b", recommended_weight=0.6)
    bare = save_package(gpt2(v, 13, layers=1), tok, tmp_path / "bare")
    base = models["base"]
    with pytest.raises(InvalidWeightsError, match=r"-0\.1"):
        compose(base, [a], [-0.1], tokenizer=tok)
    with pytest.raises(InvalidWeightsError, match="sum"):
        compose(base, [a, b], [0.7, 0.6], tokenizer=tok)
    assert compose(base, [a], tokenizer=tok).weights == [0.7]
    with pytest.warns(UserWarning, match="scaled down together"):
        c = compose(base, [a, b], tokenizer=tok)
    assert c.weights == pytest.approx([0.7 / 1.3, 0.6 / 1.3])
    with pytest.raises(MissingWeightError, match="bare"):
        compose(base, [bare], tokenizer=tok)
    with pytest.raises(InvalidWeightsError, match="auto"):
        compose(base, [a], "auto", tokenizer=tok)


def test_to_and_eval_move_every_member(tok, models):
    c = compose(models["base"], [(models["m1"], tok)], [0.5], tokenizer=tok)
    c.to(torch.float32)
    assert {p.dtype for p in c.parameters()} == {torch.float32}
    assert not c.training and all(not m.training for m in c.members)
    c.to(torch.float64)


def test_registry_memory_is_checked_from_its_manifest_before_the_pull(tok, models, tmp_path, monkeypatch):
    from memreg.registry import Registry

    v = len(tok)
    reg = Registry.init(str(tmp_path / "registry"))
    reg.publish(save_package(llama(v, 21, rows=v + 4), tok, tmp_path / "law", recommended_weight=0.25, name="law"))
    other = train_tokenizer(real_text(STDLIB), vocab_size=v)
    reg.publish(save_package(gpt2(v, 22, layers=1), other, tmp_path / "py", recommended_weight=0.2, name="py"))
    pulled: list[str] = []
    real_pull = Registry.pull
    monkeypatch.setattr(Registry, "pull", lambda self, ref, **k: (pulled.append(str(ref)), real_pull(self, ref, **k))[1])
    with pytest.raises(TokenizerMismatchError, match="py@1.0.0"):
        compose(models["base"], ["law:latest", "py@1.0.0"], tokenizer=tok, registry=str(tmp_path / "registry"))
    assert pulled == []  # refused from the manifest, nothing downloaded
    c = compose(models["base"], ["law@1.0.0"], tokenizer=tok, registry=reg)
    assert pulled == ["law@1.0.0"] and c.weights == [0.25] and c.vocab_size == v


@torch.no_grad()
def test_a_hub_id_memory_is_read_from_the_hub_cache(tok, models, batch, tmp_path, monkeypatch):
    """org/name: the snapshot in the Hugging Face cache (laid out as huggingface_hub writes it) is
    used without a request; a repository the cache lacks, offline, is one clear error."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--acme--law-memory"
    save_package(models["m1"], tok, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    ids, mask = batch
    hub = compose(models["base"], ["acme/law-memory"], [0.4], tokenizer=tok)
    direct = compose(models["base"], [(models["m1"], tok)], [0.4], tokenizer=tok)
    assert _rel(hub(ids, mask).logits, direct(ids, mask).logits, mask) < 1e-5  # loaded as float32, the fixture is float64
    from memreg.compose import MemoryNotFoundError

    with pytest.raises(MemoryNotFoundError, match="acme/other.*Hub cache"):
        compose(models["base"], ["acme/other"], [0.4], tokenizer=tok)


@torch.no_grad()
def test_a_saved_peft_adapter_is_a_memory(tok, models, batch, tmp_path):
    """A LoRA adapter folder (adapter_config.json + adapter_model.safetensors, no tokenizer) attaches:
    its base model with the adapter merged, checked against the base model's tokenizer."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from memreg.compose import MemoryNotFoundError

    v = len(tok)
    mem_base = save_package(gpt2(v, 21, layers=1).float(), tok, tmp_path / "mem-base")
    from transformers import AutoModelForCausalLM

    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(mem_base),
                          LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))  # not the identity
    peft.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "tokenizer.json").exists()
    ids, mask = batch
    got = compose(models["base"], [str(tmp_path / "adapter")], [0.5], tokenizer=tok)(ids, mask).logits
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(mem_base), tmp_path / "adapter").merge_and_unload()
    want = compose(models["base"], [(merged, tok)], [0.5], tokenizer=tok)(ids, mask).logits
    plain = compose(models["base"], [str(mem_base)], [0.5], tokenizer=tok)(ids, mask).logits
    assert _rel(got, want, mask) < 1e-5 and _rel(got, plain, mask) > 1e-3  # the adapter is really applied
    (tmp_path / "adapter" / "adapter_model.safetensors").rename(tmp_path / "adapter" / "adapter_model.bin")
    with pytest.raises(MemoryNotFoundError, match="never unpickles"):
        compose(models["base"], [str(tmp_path / "adapter")], [0.5], tokenizer=tok)


@torch.no_grad()
def test_a_composition_saves_as_references_and_loads_back(tok, models, batch, tmp_path):
    from memreg.compose import ComposedLM

    v = len(tok)
    base_dir = save_package(models["base"], tok, tmp_path / "base")
    a = save_package(llama(v, 31), tok, tmp_path / "a")
    b = save_package(gpt2(v, 32, layers=1), tok, tmp_path / "b")
    lm = compose(str(base_dir), [str(a), str(b)], [0.3, 0.15])
    path = lm.save_pretrained(tmp_path / "mix")
    assert not list((tmp_path / "mix").glob("*.safetensors"))  # references, not weights
    again = ComposedLM.from_pretrained(tmp_path / "mix")
    assert again.weights == [0.3, 0.15]
    ids, mask = batch
    torch.testing.assert_close(again(ids, mask).logits, lm(ids, mask).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="loaded model"):
        compose(models["base"], [(models["m1"], tok)], [0.2], tokenizer=tok).save_pretrained(tmp_path / "no")
    path.write_text("{}")
    from memreg.registry.errors import MemregError

    with pytest.raises(MemregError, match="not a composition file"):
        ComposedLM.from_pretrained(tmp_path / "mix")
