"""`memreg attach / eval / tune` end to end on tiny real models, package folders and a local registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import transformers  # noqa: F401  (a missing dependency must fail, not skip)

from tiny_lms import LICENSES, STDLIB, gpt2, llama, real_text, save_package, train_tokenizer
from conftest import memreg_in_process as memreg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("attach")
    tok = train_tokenizer(real_text(LICENSES))
    v = len(tok)
    base = save_package(gpt2(v, 0), tok, root / "base")
    mem = save_package(llama(v, 1, rows=v + 3), tok, root / "law", recommended_weight=0.3, name="law")
    other_tok = train_tokenizer(real_text(STDLIB), vocab_size=v)
    other = save_package(gpt2(v, 5), other_tok, root / "pymem", recommended_weight=0.3, name="pymem")
    data = root / "held.txt"
    data.write_text(Path(LICENSES[1]).read_text()[:1200])
    from memreg.registry import Registry

    reg = Registry.init(str(root / "registry"))
    reg.publish(mem)
    reg.publish(other)
    return {"root": root, "base": str(base), "mem": str(mem), "other": str(other), "data": str(data),
            "registry": str(root / "registry"), "tok": tok}


def test_attach_streams_a_completion_from_a_registry_memory(world, monkeypatch, capsys):
    prompt = "Everyone is permitted to copy"
    code, out, err = memreg(monkeypatch, capsys, "attach", world["base"], "law@1.0.0", "--registry", world["registry"],
                            "--prompt", prompt, "--max-new-tokens", "8")
    assert code == 0, err
    assert out.startswith(prompt) and len(out.strip()) > len(prompt)


@pytest.mark.slow  # beam search, then sampling twice
def test_attach_with_beams_and_sampling(world, monkeypatch, capsys):
    code, out, err = memreg(monkeypatch, capsys, "attach", world["base"], world["mem"] + "=0.5", "--prompt", "The licence",
                            "--max-new-tokens", "5", "--beams", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["data"]["weights"] == {"law@1.0.0 (" + world["mem"] + ")": 0.5}
    args = ["attach", world["base"], world["mem"], "--prompt", "The licence", "--max-new-tokens", "6",
            "--sample", "--temperature", "0.7", "--top-p", "0.9", "--seed", "3", "--json"]
    first = memreg(monkeypatch, capsys, *args)
    again = memreg(monkeypatch, capsys, *args)
    assert first[0] == 0 and json.loads(first[1])["data"]["completion"] == json.loads(again[1])["data"]["completion"]


@pytest.mark.slow  # scores held-out text and generates
def test_attach_eval_and_prompt_under_json_print_one_envelope(world, monkeypatch, capsys):
    """Both --eval and --prompt with --json: one JSON document on stdout (it used to be two)."""
    code, out, err = memreg(monkeypatch, capsys, "attach", world["base"], world["mem"], "--eval", world["data"],
                            "--context", "64", "--stride", "32", "--prompt", "The licence", "--max-new-tokens", "3",
                            "--json")
    assert code == 0, err
    data = json.loads(out)["data"]  # json.loads refuses two concatenated documents
    assert data["tokens"] > 0 and data["perplexity_composed"] > 0 and data["prompt"] == "The licence"
    assert isinstance(data["completion"], str)


@pytest.mark.slow  # scores the held-out text with the base and the composition
def test_attach_eval_prints_base_and_composed_perplexity(world, monkeypatch, capsys):
    code, out, err = memreg(monkeypatch, capsys, "attach", world["base"], world["mem"], "--eval", world["data"],
                            "--context", "64", "--stride", "32", "--json")
    assert code == 0, err
    row = json.loads(out)["data"]
    from memreg.compose import compose, member_target_log_probs
    from memreg.evaluate import mixture_perplexity, perplexity

    model = compose(world["base"], [world["mem"]])
    lps = member_target_log_probs(model, [Path(world["data"]).read_text()], context=64, stride=32)
    assert row["perplexity_base"] == pytest.approx(perplexity(lps[0]), rel=1e-9)
    assert row["perplexity_composed"] == pytest.approx(mixture_perplexity(lps[0], lps[1:], [0.3]), rel=1e-9)
    code, out, _ = memreg(monkeypatch, capsys, "attach", world["base"], world["mem"], "--eval", world["data"],
                          "--context", "64", "--stride", "32")
    assert code == 0 and "base alone" in out and "composed" in out


@pytest.mark.slow  # scores held-out text, sweeps and fits
def test_eval_sweep_plot_and_fit(world, monkeypatch, capsys):
    plot = world["root"] / "sweep.png"
    code, out, err = memreg(monkeypatch, capsys, "eval", world["base"], "--memory", world["mem"], "--data", world["data"],
                            "--context", "64", "--stride", "32", "--sweep", "--plot", str(plot), "--fit-weights", "--json")
    assert code == 0, err
    res = json.loads(out)["data"]
    assert plot.stat().st_size > 0
    (curve,) = res["sweep"].values()
    assert len(curve) == 21
    assert res["perplexity_fitted"] <= min(curve.values()) * (1 + 1e-9)
    code, out, err = memreg(monkeypatch, capsys, "eval", world["base"], "--data", world["data"], "--context", "64")
    assert code == 0 and "base alone" in out


def test_tune_prints_fitted_weights(world, monkeypatch, capsys):
    code, out, err = memreg(monkeypatch, capsys, "tune", world["base"], "law", "--registry", world["registry"],
                            "--data", world["data"], "--context", "64", "--stride", "32", "--json")
    assert code == 0, err
    res = json.loads(out)["data"]
    (w,) = res["weights"].values()
    assert 0 <= w <= 1 and res["converged"]
    assert res["perplexity_fitted"] <= res["perplexity_base"] * (1 + 1e-9)


@pytest.mark.slow  # scores held-out text, fits and publishes
def test_tune_write_publishes_a_new_version_recommending_the_fitted_weight(world, tmp_path, monkeypatch, capsys):
    from memreg.registry import Registry

    reg = Registry.init(str(tmp_path / "reg"))
    reg.publish(world["mem"])  # law@1.0.0, recommended weight 0.3
    blobs = sorted(p.name for p in (tmp_path / "reg").rglob("*") if p.is_file() and "blobs" in p.parts)
    args = ["tune", world["base"], "law", "--registry", str(tmp_path / "reg"), "--data", world["data"],
            "--context", "64", "--stride", "32"]
    code, out, err = memreg(monkeypatch, capsys, *args, "--write", "1.1.0", "--tag", "tuned", "--json")
    assert code == 0, err
    res = json.loads(out)["data"]
    (w,) = res["weights"].values()
    # the weights are not uploaded again; only the model card, which now shows the fitted weight, is new
    assert res["written"]["ref"] == "law@1.1.0" and res["written"]["uploaded"] == 1 and res["written"]["created"]
    assert res["written"]["recommended_weight"] == pytest.approx(w)

    old, new = reg.manifest("law", "1.0.0"), reg.manifest("law", "1.1.0")
    assert old.metrics.recommended_weight == 0.3  # the published version is untouched
    assert new.metrics.recommended_weight == pytest.approx(w) and w != pytest.approx(0.3)
    weights = [f for f in new.model.files if f.path != "README.md"]
    assert weights == [f for f in old.model.files if f.path != "README.md"] and new.tokenizer == old.tokenizer
    assert new.training == old.training
    (fit,) = [e for e in new.metrics.evaluations if e.dataset.startswith("memreg tune")]
    assert fit.weight == pytest.approx(w) and fit.base == world["base"] and fit.tokens == res["tokens"]
    assert fit.perplexity_with_memory == pytest.approx(res["perplexity_fitted"])
    after = {p.name for p in (tmp_path / "reg").rglob("*") if p.is_file() and "blobs" in p.parts}
    card = next(f for f in new.model.files if f.path == "README.md")
    assert after == set(blobs) | {card.hex}  # one new blob: the card
    assert reg.tags("law")["tuned"] == "1.1.0"

    # the new version's weight is what compose takes when none is given
    from memreg.compose import compose

    assert compose(world["base"], ["law@1.1.0"], registry=reg).weights == [pytest.approx(w)]
    # versions are immutable: writing 1.0.0 again (other metrics) is refused, and so is a second memory
    code, out, err = memreg(monkeypatch, capsys, *args, "--write", "1.0.0")
    assert code == 1 and "already exists" in err and len(err.strip().splitlines()) == 1
    code, out, err = memreg(monkeypatch, capsys, *args[:3], world["mem"], *args[3:], "--write", "1.2.0")
    assert code == 1 and "one memory" in err
    code, out, err = memreg(monkeypatch, capsys, *args, "--write", "v2")
    assert code == 1 and "not a version" in err
    assert reg.versions("law") == ["1.0.0", "1.1.0"]


@pytest.mark.parametrize(
    "spec, expected",
    [  # bad weights are usage errors (exit 2): tests/integration/test_cli_option_values.py
        ("{other}", "different tokenizer"),
        ("pymem@1.0.0", "different tokenizer"),
        ("./no-such-folder", "not a package folder"),
        ("Bad_Name", "not a valid name"),
    ],
)
def test_errors_are_one_line(world, monkeypatch, capsys, spec, expected):
    spec = spec.format(mem=world["mem"], other=world["other"])
    code, out, err = memreg(monkeypatch, capsys, "attach", world["base"], spec, "--registry", world["registry"],
                            "--prompt", "x", "--max-new-tokens", "2")
    assert code != 0
    assert err.startswith("error:") and err.count("\n") == 1 and expected in err, err
