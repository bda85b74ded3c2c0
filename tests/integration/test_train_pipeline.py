"""`memreg train` end to end on tiny real models and real licence texts: a package that transformers
opens and whose memreg.json validates; interrupted runs resume to the same weights."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import faiss  # noqa: F401  (a missing dependency must fail, not skip)
import typer  # noqa: F401  (a missing dependency must fail, not skip)

from licences import licence_files
from train_helpers import make_teacher_and_init, single_thread_fixture

from memreg.schemas import PackageCard
from memreg.train import TrainConfig, TrainProgress, train

pytestmark = pytest.mark.slow  # trains a memory end to end, several times

_one_thread = single_thread_fixture()
CORPUS = ["BSD", "Artistic", "Apache-2.0", "MPL-2.0", "CC0-1.0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_teacher_and_init(tmp_path_factory.mktemp("e2e"))
    corpus = root / "corpus"
    corpus.mkdir()
    for p in licence_files(CORPUS):
        shutil.copy(p, corpus / p.name)
    (corpus / "notes-latin1.txt").write_bytes("Copyright \xa9 1999 \xc9cole".encode("latin-1"))
    return root


def test_cli_writes_a_package_transformers_opens(setup, tmp_path):
    from typer.testing import CliRunner
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memreg.cli.train import train as train_command

    app = typer.Typer()
    app.command()(train_command)
    out = tmp_path / "law-memory"
    args = [str(setup / "corpus"), "--teacher", str(setup / "teacher"), "--init", str(setup / "init"), "--out",
            str(out), "--domain", "law", "--domain", "licences", "--k", "48", "--block-size", "32", "--steps", "20",
            "--batch-size", "4", "--eval-fraction", "0.1", "--name", "law", "--version", "0.1.0", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "skipped 1 of 6 corpus files" in result.output and "notes-latin1.txt" in result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])["data"]
    assert summary["k"] == 48 and summary["steps"] == 20 and summary["index"] == "Flat"

    model = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).eos_token_id == model.config.eos_token_id
    assert (out / "model.safetensors").is_file()
    card = PackageCard.model_validate_json((out / "memreg.json").read_text())
    assert card.name == "law" and card.domain.labels == ["law", "licences"]
    assert card.tokenizer is not None and card.tokenizer.vocab_size == 400
    t = card.training
    assert t.k == 48 and t.steps == 20 and t.beta == 0.5 and t.corpus_digest.startswith("sha256:")
    assert t.datastore_size == t.corpus_tokens - 1 and t.extra["skipped_files"] == 1
    bases = [e.base for e in card.metrics.evaluations]
    assert bases == [str(setup / "teacher"), str(setup / "init")]
    for e in card.metrics.evaluations:
        assert e.perplexity_with_memory <= e.perplexity_base and set(e.sweep) >= {"0", "1"}
    assert card.metrics.recommended_weight is not None

    # the same command again finds every stage cached and writes the same weights
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    # a bad setting is one line and a non-zero exit
    bad = CliRunner().invoke(app, [*args[:-1], "--k", "999999", "--work-dir", str(tmp_path / "w2")])
    assert bad.exit_code == 1 and "error: --k 999999 is larger than the datastore allows" in bad.output
    assert "Traceback" not in bad.output


class _CrashAt(TrainProgress):
    """Raises once `stage` has advanced past `after` units: a kill in the middle of that stage."""

    def __init__(self, stage: str, after: int) -> None:
        self.target, self.after, self.current, self.done = stage, after, None, 0

    def stage(self, name, *, total, unit, cached=False):
        self.current, self.done = name, 0

    def advance(self, n=1, **info):
        self.done += n
        if self.current == self.target and self.done > self.after:
            self.kill()

    def kill(self) -> None:
        raise KeyboardInterrupt(f"killed in {self.target}")


def test_interrupted_stages_resume_to_the_same_artifacts(setup, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import memreg.train.datastore as ds

    monkeypatch.setattr(ds, "FLUSH_EVERY_ROWS", 256)

    def config(out: Path) -> TrainConfig:
        return TrainConfig(corpus=[str(p) for p in licence_files(CORPUS[:3])], teacher=str(setup / "teacher"),
                           init=str(setup / "init"), out=out, block_size=32, k=32, steps=12, batch_size=4,
                           checkpoint_every=5, search_batch_size=256, eval_fraction=0.1, seed=7)

    straight = train(config(tmp_path / "a"))
    for stage, after in (("datastore", 1000), ("knn targets", 1000), ("train", 7)):
        with pytest.raises(KeyboardInterrupt, match=stage):
            train(config(tmp_path / "b"), progress=_CrashAt(stage, after))
    resumed = train(config(tmp_path / "b"))
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert straight.card.metrics == resumed.card.metrics
    assert straight.temperature == resumed.temperature


class _Stages(TrainProgress):
    def __init__(self) -> None:
        self.seen: dict[str, bool] = {}

    def stage(self, name, *, total, unit, cached=False):
        self.seen[name] = cached


def test_adapted_teacher_changes_the_keys_lowers_training_ce_and_is_cached(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    from memreg.train import corpus as corpus_mod
    from memreg.train.datastore import open_datastore
    from memreg.train.trainer import BlockBatches, mean_ce

    def config(out: Path, steps: int) -> TrainConfig:
        return TrainConfig(corpus=[str(p) for p in licence_files(CORPUS[:2])], teacher=str(setup / "teacher"),
                           init=str(setup / "init"), out=out, block_size=32, k=16, steps=3, batch_size=4,
                           eval_fraction=0.1, seed=3, adapt_teacher_steps=steps, adapt_teacher_lr=3e-3)

    plain = train(config(tmp_path / "plain", 0))
    stages = _Stages()
    adapted = train(config(tmp_path / "adapted", 25), progress=stages)
    assert stages.seen["adapt teacher"] is False
    assert plain.card.training.extra["teacher_adaptation"] is None
    record = adapted.card.training.extra["teacher_adaptation"]
    assert record["steps"] == 25 and record["split"] == "training"
    assert record["train_ce_after"] < record["train_ce_before"]
    for r in (plain, adapted):
        assert r.card.training.extra["knn_effective_neighbours"] >= 1

    (teacher_dir,) = adapted.work_dir.glob("teacher-*")
    assert not list(plain.work_dir.glob("teacher-*"))  # off: no stage folder
    keys_plain, values_plain = open_datastore(next(plain.work_dir.glob("datastore-*")))
    keys_adapted, values_adapted = open_datastore(next(adapted.work_dir.glob("datastore-*")))
    assert (values_plain == values_adapted).all() and keys_plain.shape == keys_adapted.shape
    assert not (keys_plain == keys_adapted).all()

    # CE on the training split, measured here independently of the pipeline's own record
    (corpus_dir,) = adapted.work_dir.glob("corpus-*")
    batches = BlockBatches(corpus_mod.TokenArray(corpus_dir, "train"), None, None, block_size=32, batch_size=4, seed=0)
    micro = list(range(batches.micro_per_epoch))
    ce = {name: mean_ce(AutoModelForCausalLM.from_pretrained(ref), batches, micro, vocab_size=400)
          for name, ref in (("teacher", setup / "teacher"), ("adapted", teacher_dir / "final"))}
    assert ce["adapted"] < ce["teacher"] - 0.05, ce

    # a rerun finds the adapted teacher cached and does not retrain it
    weights = teacher_dir / "final" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = _Stages()
    train(config(tmp_path / "adapted", 25), progress=again)
    assert again.seen["adapt teacher"] is True and weights.stat().st_mtime_ns == stamp
    # another setting is another stage (and another work folder claim)
    with pytest.raises(Exception, match="adapt_teacher_steps"):
        train(config(tmp_path / "adapted", 26))


SIGKILL_RUN = """
import json, os, signal, sys
import torch
from test_train_pipeline import _CrashAt
from memreg.train import TrainConfig, train

torch.set_num_threads(1)  # as the in-process runs (single_thread_fixture): same float reduction order

class KillAt(_CrashAt):
    def kill(self):
        os.kill(os.getpid(), signal.SIGKILL)  # no unwinding, no finally: as when the machine dies

cfg, stage, after = json.loads(sys.argv[1])
train(TrainConfig(**cfg), progress=KillAt(stage, after))
"""


def _child_env() -> dict[str, str]:
    """This process's environment (read now: the fixtures set $MEMREG_HOME), with the folders of this
    module, of train_helpers and of the shared test helpers (tests/: licences, tiny_lms) on PYTHONPATH:
    pytest's `pythonpath` setting reaches this process only."""
    tests = Path(__file__).parents[1]
    folders = [str(Path(__file__).parent), str(tests / "unit"), str(tests), os.environ.get("PYTHONPATH")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(f for f in folders if f)}


def test_sigkill_mid_stage_then_rerun_gives_the_same_weights(setup, tmp_path):
    import subprocess

    from safetensors.torch import load_file

    cfg = dict(corpus=[str(p) for p in licence_files(CORPUS[:3])], teacher=str(setup / "teacher"),
               init=str(setup / "init"), block_size=32, k=32, steps=12, batch_size=4, checkpoint_every=5,
               search_batch_size=256, eval_fraction=0.1, seed=7)
    train(TrainConfig(**cfg, out=tmp_path / "a"))
    killed = {**cfg, "out": str(tmp_path / "b"), "work_dir": str(tmp_path / "work-b")}
    for stage, after in (("knn targets", 300), ("train", 7)):
        proc = subprocess.run([sys.executable, "-c", SIGKILL_RUN, json.dumps([killed, stage, after])],
                              capture_output=True, text=True, timeout=600, env=_child_env())
        assert proc.returncode == -9, proc.stderr[-2000:]
        assert not (tmp_path / "b" / "model.safetensors").exists()
    train(TrainConfig(**killed))
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_torch_search_needs_no_faiss_and_gives_faiss_targets(setup, tmp_path, monkeypatch):
    from memreg.train.knn import open_targets

    def config(out: Path, search: str) -> TrainConfig:
        return TrainConfig(corpus=[str(p) for p in licence_files(CORPUS[:2])], teacher=str(setup / "teacher"),
                           init=str(setup / "init"), out=out, block_size=32, k=24, steps=4, batch_size=4,
                           eval_fraction=0.1, seed=3, search=search)

    from memreg.knnlm import KNNLM

    with_faiss = train(config(tmp_path / "f", "faiss"))
    text = torch.arange(5, 45)[None]  # token ids; the kNN-LM scores every position
    knnlm_faiss = KNNLM.from_work_dir(tmp_path / "f.work").log_probs(text)
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails: as on a GPU box without it
    with_torch = train(config(tmp_path / "t", "torch"))
    knnlm_torch = KNNLM.from_work_dir(tmp_path / "t.work").log_probs(text)  # no index.faiss: torch search
    gap = (knnlm_torch.exp() - knnlm_faiss.exp()).abs().amax(-1)[0]  # (T,) largest probability difference
    # Position 0 sees one token: its key equals the key of every datastore block that starts with that
    # token (exact duplicates, a tie at the k-th neighbour). Longer contexts have distinct keys.
    assert gap[1:].max() < 1e-5
    assert with_torch.index == "torch-exact" and with_faiss.index == "Flat"
    assert with_torch.temperature == pytest.approx(with_faiss.temperature, rel=1e-4)
    (ti, tp), (fi, fp) = (open_targets(next((tmp_path / f"{x}.work").glob("knn-*"))) for x in ("t", "f"))
    dense = {}
    for name, (ids, probs) in {"t": (ti, tp), "f": (fi, fp)}.items():
        dense[name] = np.zeros((len(ids), 400), dtype=np.float32)  # p_kNN over the 400-token vocabulary
        np.add.at(dense[name], (np.arange(len(ids))[:, None], ids), probs.astype(np.float32))
    differ = np.flatnonzero(abs(dense["t"] - dense["f"]).max(1) > 2e-3)
    # Licence texts repeat contexts word for word, so some keys are exact duplicates: where such a tie
    # straddles the k-th neighbour either search may keep either copy. Every row that differs must be one.
    keys = np.load(next((tmp_path / "t.work").glob("datastore-*")) / "keys.npy").astype(np.float64)
    for row in differ:
        d = np.sort(((keys - keys[row]) ** 2).sum(1))
        assert np.isclose(d[24], d[25], rtol=1e-5), f"row {row} differs without a tie at the 24th neighbour"
    assert len(differ) < 0.05 * len(dense["t"])


def _replayed_best(curve: list[dict], field: str) -> int:
    """The step memreg's EarlyStopping picks on `field` of a card's curve (no patience: every point)."""
    from memreg.train.stopping import EarlyStopping

    es = EarlyStopping(None, monitor=field)
    for point in curve:
        es.record(point["step"], point)
    return es.best_step


def test_select_on_picks_the_checkpoint_and_the_card_says_which(setup, tmp_path):
    """--select-on mixture judges base (the teacher) + memory: its best step follows the mixture's curve, the
    card records both curves and the criterion, the summary names it. --select-on memory (the default) on
    the same work folder reuses the datastore, retrains, and follows the memory's curve; --select-base
    another base."""
    from typer.testing import CliRunner

    from memreg.cli.train import train as train_command

    app = typer.Typer()
    app.command()(train_command)
    common = dict(corpus=[str(p) for p in licence_files(CORPUS[:2])], teacher=str(setup / "teacher"),
                  init=str(setup / "init"), block_size=32, k=16, steps=24, eval_every=3, batch_size=4, lr=1e-2,
                  eval_fraction=0.1, seed=5, work_dir=tmp_path / "work")  # lr: the memory alone overfits early
    args = [*common["corpus"], "--teacher", common["teacher"], "--init", common["init"], "--out", str(tmp_path / "mix"),
            "--block-size", "32", "--k", "16", "--steps", "24", "--eval-every", "3", "--batch-size", "4", "--lr", "1e-2",
            "--eval-fraction", "0.1", "--seed", "5", "--work-dir", str(tmp_path / "work"), "--quiet", "--select-on", "mixture"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"packaged the best checkpoint on base + memory with {setup / 'teacher'} (step" in result.output
    mixture = PackageCard.model_validate_json((tmp_path / "mix" / "memreg.json").read_text()).training.extra
    curve = mixture["learning_curve"]
    assert len(curve) == 9 and all({"val_loss", "val_perplexity", "val_loss_with_base", "val_perplexity_with_base",
                                    "val_weight"} <= set(p) for p in curve)
    sched = mixture["schedule"]
    assert sched["select_on"] == "mixture" and sched["select_base"] == str(setup / "teacher")
    assert sched["best_step"] == _replayed_best(curve, "val_loss_with_base")

    stages = _Stages()
    memory = train(TrainConfig(**common, out=tmp_path / "mem", select_on="memory"), progress=stages)
    assert stages.seen["datastore"] is True and stages.seen["knn targets"] is True and stages.seen["train"] is False
    extra = memory.card.training.extra
    assert extra["schedule"]["select_on"] == "memory"
    assert extra["schedule"]["best_step"] == _replayed_best(extra["learning_curve"], "val_loss")
    # same training, same curve: only the pick differs (the memory's best comes early, the mixture's late)
    assert [p["val_loss"] for p in extra["learning_curve"]] == [p["val_loss"] for p in curve]
    assert extra["schedule"]["best_step"] < sched["best_step"]

    other = train(TrainConfig(**common, out=tmp_path / "other", select_on="mixture", select_base=str(setup / "init")))
    extra = other.card.training.extra
    assert extra["schedule"]["select_base"] == str(setup / "init")
    assert [p["val_loss"] for p in extra["learning_curve"]] == [p["val_loss"] for p in curve]
    assert [p["val_perplexity_with_base"] for p in extra["learning_curve"]] != [p["val_perplexity_with_base"] for p in curve]
    assert extra["schedule"]["best_step"] == _replayed_best(extra["learning_curve"], "val_loss_with_base")
