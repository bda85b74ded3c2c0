"""`--select-on` / `--select-base`: what early stopping and the packaged checkpoint are judged on.
The criterion and the base re-key training (not the corpus, datastore, index or kNN targets); a base
the memory cannot be mixed with is refused before any work; a bad value is a usage error (exit 2)."""

from __future__ import annotations

import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import typer  # noqa: F401  (a missing dependency must fail, not skip)

from licences import licence_files
from train_helpers import make_model, make_model_of_another_tokenizer, make_teacher_and_init

from memreg.train import TrainConfig, train
from memreg.train.config import DATA_STAGES, stage_keys
from memreg.train.errors import InvalidTrainSettingError, TokenizerMismatchError

KEYS = dict(corpus_digest="sha256:c", tokenizer_digest="sha256:t", block_size=32)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(corpus=["a.txt"], teacher="t", init="i", out="o", **kw)


def test_select_on_memory_keeps_the_keys_made_before_the_option():
    """Work folders trained before --select-on judged the memory alone against the teacher: the same
    run asked for now finds them (keys computed with the code before the option)."""
    assert stage_keys(_cfg(select_on="memory"), **KEYS) == {
        "corpus": "dd359dabeefed18389ec33344ab9628977241f847888e63939828bbbf7a87f13",
        "teacher": "94a27aec36a8690695f2f551773c26a575dec26bcbbb15cf9a28eb35dc13eb96",
        "datastore": "b9b96f1e9b180b5e65416b770967574c0993764884d938d65944f9ee5d11b047",
        "index": "c15404564622a13d30528dabab893ff7a5a0b963b12b2730b7674281ddc5e857",
        "knn": "50a08f754102f028b82c9e276e83998dbe08ce215a072af914c482c4eeba9f38",
        "init": "baf9d0c3e7877faf47a19bc38f7ebcc3babf3122152ba6e8318153572fbdbfe5",
        "train": "5bba74bdbbbc2c14dbf8d37f43af76341b400ae1558d727f230a6fd988205143",
        "eval": "5e577d77ad02a59554049a95e75a5d71c0698ec2ebf27a146b531c176babf355",
    }


def test_criterion_and_base_rekey_training_but_not_the_data():
    memory = stage_keys(_cfg(select_on="memory"), **KEYS)
    variants = [
        stage_keys(_cfg(select_on="mixture"), **KEYS),
        stage_keys(_cfg(select_on="mixture", select_base="b"), **KEYS),
        stage_keys(_cfg(select_on="memory", select_base="b"), **KEYS),
        stage_keys(_cfg(select_on="mixture", select_base="b"), **KEYS, select_base={"weights": {"m.safetensors": 1}}),
        stage_keys(_cfg(select_on="mixture", select_base="b"), **KEYS, select_base={"weights": {"m.safetensors": 2}}),
    ]
    trains = {memory["train"], *(v["train"] for v in variants)}
    assert len(trains) == 1 + len(variants)  # each criterion, base and base's weights is its own training
    for v in variants:
        assert all(v[s] == memory[s] for s in (*DATA_STAGES, "init"))  # datastore, index, kNN targets reused
        assert v["eval"] != memory["eval"]
    assert _cfg().select_on == "memory" and _cfg().select_base is None  # the default (held-out quickstart, README)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_teacher_and_init(tmp_path_factory.mktemp("select"))


def _one_line(err: Exception) -> None:
    assert "\n" not in str(err) and str(err)


def test_a_base_with_another_tokenizer_is_refused_before_any_work(models, tmp_path):
    make_model_of_another_tokenizer(tmp_path)
    cfg = TrainConfig(corpus=[str(p) for p in licence_files(["BSD"])], teacher=str(models / "teacher"),
                      init=str(models / "init"), out=tmp_path / "pkg", select_base=str(tmp_path / "other-model"))
    with pytest.raises(TokenizerMismatchError, match="--select-base .*other-model cannot be mixed with this memory") as e:
        train(cfg)
    _one_line(e.value)
    assert not (tmp_path / "pkg.work").exists()


def test_a_base_shorter_than_the_blocks_is_refused(models, tmp_path):
    make_model(tmp_path / "short", "gpt2", tokenizer_from=models / "tok", positions=16)
    cfg = TrainConfig(corpus=[str(p) for p in licence_files(["BSD"])], teacher=str(models / "teacher"),
                      init=str(models / "init"), out=tmp_path / "pkg", block_size=32, select_base=str(tmp_path / "short"))
    with pytest.raises(InvalidTrainSettingError, match="reads 16 tokens at most, fewer than the 32-token blocks") as e:
        train(cfg)
    _one_line(e.value)
    assert not (tmp_path / "pkg.work").exists()


def test_a_bad_select_on_is_a_usage_error(tmp_path):
    from typer.testing import CliRunner

    from memreg.cli.train import train as train_command

    app = typer.Typer()
    app.command()(train_command)
    result = CliRunner().invoke(app, ["corpus", "--teacher", "t", "--init", "i", "--out", str(tmp_path / "o"),
                                      "--select-on", "base"])
    assert result.exit_code == 2 and "--select-on" in result.output and "'mixture', 'memory'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.work").exists()


def test_the_cli_default_is_the_train_configs():
    import inspect

    from memreg.cli.train import train as train_command

    params = inspect.signature(train_command).parameters
    assert params["select_on"].default == TrainConfig.model_fields["select_on"].default == "memory"
    assert params["select_base"].default is TrainConfig.model_fields["select_base"].default is None
