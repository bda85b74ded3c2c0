"""`memreg train` with its defaults: stops on the held-out loss, packages the best checkpoint, writes
the learning curve and the teacher/init/memory perplexities into the card; a GGUF teacher and a
truncated init (`--init-layers`) work end to end."""

from __future__ import annotations

import shutil

import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import faiss  # noqa: F401  (a missing dependency must fail, not skip)

from licences import licence_files
from train_helpers import make_teacher_and_init, single_thread_fixture

from memreg.train import TrainConfig, train
from memreg.train.pipeline import _warn_about_quality

_one_thread = single_thread_fixture()
CORPUS = ["BSD", "Artistic", "Apache-2.0", "MPL-2.0", "CC0-1.0", "GPL-2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_teacher_and_init(tmp_path_factory.mktemp("conv"))


@pytest.mark.slow  # trains a memory to convergence
def test_default_run_stops_on_the_held_out_loss_and_packages_the_best_checkpoint(models, tmp_path):
    from transformers import AutoModelForCausalLM

    from memreg.train.trainer import load_best

    result = train(TrainConfig(corpus=[str(p) for p in licence_files(CORPUS)], teacher=str(models / "teacher"),
                               init=str(models / "init"), out=tmp_path / "mem", block_size=32, k=32, batch_size=8,
                               eval_fraction=0.2, lr=3e-3, max_epochs=40, patience=2, eval_every=10, seed=1))
    extra = result.card.training.extra
    curve, sched = extra["learning_curve"], extra["schedule"]
    assert sched["early_stopping"] and extra["warmup_steps"] >= 1
    assert curve[0]["step"] == 0 and "train_kl" not in curve[0]  # the untrained init comes first
    for point in curve[1:]:
        assert {"train_kl", "train_ce", "val_loss", "val_perplexity", "val_loss_with_base", "val_perplexity_with_base",
                "val_weight"} <= set(point)
    steps = [p["step"] for p in curve]
    assert steps == sorted(steps) and all(s % 10 == 0 for s in steps[:-1])
    best = min(curve, key=lambda p: p["val_loss"])  # the default judges the memory alone
    assert sched["select_on"] == "memory" and sched["best_step"] == best["step"]
    if sched["stop_reason"] == "patience":  # stopped before the cap, `patience` evaluations after the best
        assert result.steps < sched["max_steps"] and steps[-1] > best["step"]
    # the package holds the best checkpoint's weights, not the last step's
    (ckpt,) = result.work_dir.glob(f"train-*/checkpoints/best-step-{best['step']:07d}")
    packaged = AutoModelForCausalLM.from_pretrained(tmp_path / "mem").state_dict()
    kept = AutoModelForCausalLM.from_pretrained(models / "init")
    load_best(kept, ckpt)  # safetensors' save_model keeps one name of the tied embedding
    for name, tensor in kept.state_dict().items():
        torch.testing.assert_close(packaged[name], tensor, rtol=0, atol=0, msg=name)
    # the card: held-out perplexities of memory, init and teacher, and the split's 8-gram overlap
    val = extra["validation"]
    assert set(val["perplexity"]) >= {"memory", "init", "teacher"} and val["documents"] >= 1
    assert 0 <= val["eval_8gram_overlap"] <= 1
    assert val["perplexity"]["memory"] < val["perplexity"]["init"]  # a random init learns the domain
    (evaluation_teacher, evaluation_init) = result.card.metrics.evaluations
    assert evaluation_init.perplexity_base == pytest.approx(val["perplexity"]["init"])
    assert result.card.metrics.recommended_weight is not None


@pytest.mark.slow  # trains from the real SmolLM2 GGUF
def test_gguf_teacher_and_init_with_init_layers(tmp_path):
    from test_gguf import write_tiny_gguf
    from transformers import AutoModelForCausalLM

    gguf = tmp_path / "tiny.F32.gguf"
    write_tiny_gguf(gguf)  # a 2-block llama with its tokenizer
    out = tmp_path / "mem"
    result = train(TrainConfig(corpus=[str(p) for p in licence_files(CORPUS[:4])], teacher=str(gguf), init=str(gguf),
                               init_layers=1, out=out, block_size=32, k=16, steps=4, batch_size=4, eval_fraction=0.2))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
    extra = result.card.training.extra
    assert extra["init_layers"]["layers"] == 1 and extra["init_layers"]["source_layers"] == 2
    # the truncated init is no base: the memory is evaluated with the teacher, named as the user gave it
    assert [e.base for e in result.card.metrics.evaluations] == [str(gguf)]
    assert set(extra["validation"]["perplexity"]) == {"memory", "teacher", "init"}
    assert result.card.training.teacher_model == str(gguf)


def _metas(memory: float, init: float, teacher: float, adapted: float | None = None, *, best_step: int = 20,
           select_on: str = "mixture") -> dict:
    ppl = {"memory": memory, "init": init, "teacher": teacher}
    if adapted is not None:
        ppl["adapted_teacher"] = adapted
    train = {"curve": [{"step": 0}, {"step": 20}], "best_step": best_step, "steps": 20, "select_on": select_on}
    return {"eval": {"perplexity": ppl}, "train": train}


class _Runner:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def note(self, message: str, *, warning: bool = False) -> None:
        if warning:
            self.warnings.append(message)


@pytest.mark.parametrize("ppl, expected", [
    ((10.0, 20.0, 15.0), []),
    ((25.0, 20.0, 15.0), ["worse than its untrained init"]),
    ((10.0, 20.0, 30.0), ["knows the domain less well than the init"]),
    ((10.0, 20.0, 30.0, 18.0), []),  # an adapted teacher is the one that built the datastore
])
def test_quality_warnings(ppl, expected):
    run = _Runner()
    _warn_about_quality(run, _metas(*ppl))  # type: ignore[arg-type]
    assert len(run.warnings) == len(expected)
    for text, warning in zip(expected, run.warnings):
        assert text in warning


@pytest.mark.parametrize("select_on, judged", [("mixture", "base + memory"), ("memory", "the memory alone")])
def test_packaging_the_untrained_init_is_warned(select_on, judged):
    """A run whose best checkpoint is step 0 (no trained one beat the init) packages the init: say so."""
    run = _Runner()
    _warn_about_quality(run, _metas(10.0, 10.0, 5.0, best_step=0, select_on=select_on))  # type: ignore[arg-type]
    assert len(run.warnings) == 1
    assert f"no trained checkpoint beat the untrained init on {judged}" in run.warnings[0]
