"""The composition as a transformers model: PreTrainedModel + GenerationMixin, saved as references,
reopened by the Auto classes after `import memreg` (either import order, no trust_remote_code) with
bit-identical log-probabilities; `memreg.compose` stays callable in every import order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_lms import LICENSES, gpt2, llama, save_package

from tests.conftest import REPO

import memreg
from memreg.compose import ComposedForCausalLM, CompositionConfig, CompositionFileError, compose


@pytest.fixture(scope="module")
def folders(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    v = len(tok)
    return {"base": save_package(gpt2(v, 0), tok, root / "base"),
            "law": save_package(llama(v, 1, rows=v + 3), tok, root / "law"),
            "code": save_package(gpt2(v, 2, layers=1), tok, root / "code")}


@pytest.fixture(scope="module")
def saved(folders, tmp_path_factory):
    """A composition of folders, saved; and the ids and log-probabilities it gave before saving."""
    lm = compose(str(folders["base"]), [str(folders["law"]), str(folders["code"])], [0.3, 0.15])
    out = tmp_path_factory.mktemp("saved") / "mix"
    lm.save_pretrained(out)
    ids = lm.tokenizer([Path(LICENSES[0]).read_text()[300:400]], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = lm(ids).logits
    np.save(out.parent / "ids.npy", ids.numpy())
    np.save(out.parent / "logp.npy", logp.numpy())
    return out, lm, ids, logp


def test_compose_returns_a_transformers_causal_lm(saved):
    from transformers import GenerationMixin, PreTrainedModel

    _, lm, ids, logp = saved
    assert isinstance(lm, PreTrainedModel) and isinstance(lm, GenerationMixin)
    assert isinstance(lm.config, CompositionConfig) and lm.config.model_type == "memreg_composition"
    assert memreg.ComposedLM is ComposedForCausalLM  # the SDK's earlier name
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(ids.shape, dtype=logp.dtype))  # a distribution


def test_save_pretrained_writes_references_never_weights(saved, folders):
    out, lm, _, _ = saved
    assert not list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "memreg_composition" and config["architectures"] == ["ComposedForCausalLM"]
    assert config["base"] == {"path": str(folders["base"].resolve())}
    assert config["memories"] == [{"path": str(folders["law"].resolve())}, {"path": str(folders["code"].resolve())}]
    assert config["weights"] == [0.3, 0.15]
    assert config["max_position_embeddings"] == 256 and config["vocab_size"] == len(lm.tokenizer)
    assert (out / "generation_config.json").exists() and (out / "tokenizer.json").exists()


def test_a_relative_base_is_saved_absolute_and_loads_from_any_directory(folders, tmp_path, monkeypatch, saved):
    _, _, ids, logp = saved
    monkeypatch.chdir(folders["base"].parent)
    lm = compose("base", ["./law", "./code"], [0.3, 0.15])  # typed relative to the working directory
    lm.save_pretrained(tmp_path / "mix")
    monkeypatch.chdir(tmp_path)  # elsewhere: a folder named "base" here must not be what loads
    save_package(gpt2(len(lm.tokenizer), 99), lm.tokenizer, tmp_path / "base")
    again = ComposedForCausalLM.from_pretrained(tmp_path / "mix")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, logp)


def test_relative_references_resolve_against_the_saved_folder_never_the_cwd(saved, folders, tmp_path, monkeypatch):
    out, _, ids, logp = saved
    config = json.loads((out / "config.json").read_text())
    moved = tmp_path / "deep" / "mix"
    moved.mkdir(parents=True)
    config["base"] = {"path": os.path.relpath(folders["base"].resolve(), moved)}
    config["memories"] = [{"path": os.path.relpath(folders[k].resolve(), moved)} for k in ("law", "code")]
    (moved / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    with torch.no_grad():
        assert torch.equal(ComposedForCausalLM.from_pretrained(moved)(ids).logits, logp)
    cfg = CompositionConfig(base={"path": "base"}, memories=[], weights=[])
    from memreg.compose.config import reference_text

    with pytest.raises(CompositionFileError, match="relative folder"):
        reference_text(cfg.base, None)


def test_a_broken_config_is_one_clear_error(saved, tmp_path):
    out, _, _, _ = saved
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((out / "config.json").read_text())
    config["base"] = {"somewhere": "x"}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CompositionFileError, match="not a composition file: base"):
        ComposedForCausalLM.from_pretrained(bad)
    config["base"], config["weights"] = json.loads((out / "config.json").read_text())["base"], [0.3]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CompositionFileError, match="2 memories but 1 weights"):
        ComposedForCausalLM.from_pretrained(bad)


def test_a_folder_from_an_earlier_memreg_is_named(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "memreg-composition.json").write_text('{"format_version": 1}')
    with pytest.raises(CompositionFileError, match="earlier memreg"):
        ComposedForCausalLM.from_pretrained(tmp_path / "old")


def test_a_composition_of_loaded_models_refuses_to_save(tok, tmp_path):
    v = len(tok)
    lm = compose(gpt2(v, 0), [(gpt2(v, 2, layers=1), tok)], [0.2], tokenizer=tok)
    with pytest.raises(ValueError, match="loaded model"):
        lm.save_pretrained(tmp_path / "no")


def test_a_registry_memory_is_saved_with_its_digest_and_checked_at_load(tok, folders, tmp_path):
    from memreg.compose import DigestMismatchError
    from memreg.registry import Registry

    reg = Registry.init(str(tmp_path / "registry"))
    reg.publish(save_package(llama(len(tok), 1, rows=len(tok) + 3), tok, tmp_path / "law", name="law"))
    lm = compose(str(folders["base"]), ["law"], [0.25], registry=reg)
    lm.save_pretrained(tmp_path / "mix")
    ref = json.loads((tmp_path / "mix" / "config.json").read_text())["memories"][0]
    assert ref["registry"] == "law@1.0.0" and ref["digest"].startswith("sha256:")
    assert ComposedForCausalLM.from_pretrained(tmp_path / "mix").weights == [0.25]
    config = json.loads((tmp_path / "mix" / "config.json").read_text())
    config["memories"][0]["digest"] = "sha256:" + "0" * 64
    (tmp_path / "mix" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DigestMismatchError, match="law@1.0.0"):
        ComposedForCausalLM.from_pretrained(tmp_path / "mix")


# ------------------------------------------------------------------------------ fresh processes
_AUTO = textwrap.dedent("""
    import sys
    order, folder = sys.argv[1], sys.argv[2]
    if order == "memreg-first":
        import memreg
        heavy = [m for m in ("torch", "transformers") if m in sys.modules]
        assert not heavy, heavy  # import memreg stays light
        import transformers
    else:
        import transformers
        import memreg
    import numpy as np, torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)  # no trust_remote_code
    assert type(config).__name__ == "CompositionConfig" and isinstance(model, PreTrainedModel), type(model)
    ids = torch.from_numpy(np.load(sys.argv[3]))
    with torch.no_grad():
        got = model(ids).logits.numpy()
    assert np.array_equal(got, np.load(sys.argv[4])), float(np.abs(got - np.load(sys.argv[4])).max())
    print("OK", type(model).__name__)
""")


@pytest.mark.slow
@pytest.mark.parametrize("order", ["memreg-first", "transformers-first"])
def test_auto_classes_rebuild_a_saved_composition_bit_for_bit(saved, order):
    out = saved[0]
    proc = subprocess.run([sys.executable, "-c", _AUTO, order, str(out), str(out.parent / "ids.npy"),
                           str(out.parent / "logp.npy")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK ComposedForCausalLM" in proc.stdout


_CALLABLE = textwrap.dedent("""
    import sys
    steps = sys.argv[1].split(",")
    import memreg
    for step in steps:
        if step == "ComposedLM":
            memreg.ComposedLM
        elif step == "fit_weights":
            memreg.fit_weights
        elif step == "load_composition":
            memreg.load_composition
        elif step == "from-import":
            from memreg.compose import CompositionConfig, compose  # noqa: F401
        elif step == "submodule":
            import memreg.compose.model  # noqa: F401
        elif step == "train":
            memreg.train
    assert callable(memreg.compose), type(memreg.compose)
    try:
        memreg.compose()
    except TypeError as e:
        assert "base" in str(e), e  # the function's own complaint: it was called, not the module refused
    import memreg.compose as c
    assert c is memreg.compose and callable(c)
    print("OK")
""")


@pytest.mark.slow
@pytest.mark.parametrize("steps", ["ComposedLM", "fit_weights,from-import", "submodule,load_composition",
                                   "from-import,submodule,train", "train"])
def test_memreg_compose_stays_callable_in_every_import_order(steps):
    proc = subprocess.run([sys.executable, "-c", _CALLABLE, steps], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_from_pretrained_takes_dtype_and_one_device_and_names_what_it_does_not_take(saved):
    from transformers import AutoModelForCausalLM

    out = saved[0]
    lm = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64, device_map="cpu")
    assert {p.dtype for p in lm.parameters()} == {torch.float64} and not lm.training
    with pytest.raises(ValueError, match="one device"):
        AutoModelForCausalLM.from_pretrained(out, device_map="auto")
    with pytest.raises(TypeError, match="load_in_8bit"):
        ComposedForCausalLM.from_pretrained(out, load_in_8bit=True)
