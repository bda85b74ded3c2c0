"""Bad input to `train`: each a one-line error that names the file or setting, before the slow stages."""

from __future__ import annotations

import shutil

import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import faiss  # noqa: F401  (a missing dependency must fail, not skip)

from licences import licence_files  # noqa: E402
from train_helpers import make_model, make_model_of_another_tokenizer, make_tokenizer, single_thread_fixture  # noqa: E402

from memreg.train import TrainConfig, TrainProgress, train  # noqa: E402
from memreg.train.errors import (CorpusTooSmallError, EmptyCorpusError, InvalidTrainSettingError,  # noqa: E402
                                 MemregError, TokenizerMismatchError, WorkDirMismatchError)

_one_thread = single_thread_fixture()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tokenizer(root / "tok")
    make_model(root / "teacher", "gpt2", tokenizer_from=root / "tok", seed=1)
    make_model(root / "init", "gpt2", tokenizer_from=root / "tok", seed=2)
    return root


class _StopAt(TrainProgress):
    def __init__(self, stage: str) -> None:
        self.at, self.notes = stage, []

    def stage(self, name, *, total, unit, cached=False):
        if name == self.at:
            raise KeyboardInterrupt(name)

    def note(self, message, *, warning=False):
        self.notes.append(message)


def _config(models, tmp_path, corpus, **kw):
    return TrainConfig(corpus=[str(c) for c in corpus], teacher=str(models / "teacher"), init=str(models / "init"),
                       out=tmp_path / "pkg", block_size=32, steps=2, **kw)


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and isinstance(exc, MemregError)
    return msg


def test_empty_corpus(models, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("\n\n")
    with pytest.raises(EmptyCorpusError) as e:
        train(_config(models, tmp_path, [tmp_path / "empty"]))
    assert "holds no text" in _one_line(e.value)


def test_only_binary_files_is_empty_and_counts_them(models, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(EmptyCorpusError, match="1 skipped"):
        train(_config(models, tmp_path, [tmp_path / "c"]))


def test_corpus_shorter_than_one_block(models, tmp_path):
    (tmp_path / "short.txt").write_text(licence_files(["BSD"])[0].read_text()[:30])  # ~20 tokens
    with pytest.raises(CorpusTooSmallError, match="fewer than one block of 33.*--block-size") as e:
        train(_config(models, tmp_path, [tmp_path / "short.txt"], eval_fraction=0))
    _one_line(e.value)


def test_k_larger_than_the_datastore(models, tmp_path):
    bsd = licence_files(["BSD"])[0]
    with pytest.raises(InvalidTrainSettingError, match=r"--k 100000 is larger than the datastore allows") as e:
        train(_config(models, tmp_path, [bsd], k=100_000, eval_fraction=0))
    _one_line(e.value)


def test_default_k_is_lowered_with_a_note(models, tmp_path):
    (tmp_path / "part.txt").write_text(licence_files(["BSD"])[0].read_text()[:700])  # ~500 tokens
    progress = _StopAt("datastore")
    with pytest.raises(KeyboardInterrupt):
        train(_config(models, tmp_path, [tmp_path / "part.txt"], eval_fraction=0), progress=progress)
    assert any(n.startswith("k lowered from the paper's 1024 to ") for n in progress.notes), progress.notes


def test_skipped_files_are_noted(models, tmp_path):
    (tmp_path / "c").mkdir()
    shutil.copy(licence_files(["BSD"])[0], tmp_path / "c" / "BSD")
    (tmp_path / "c" / "latin1.txt").write_bytes(b"caf\xe9")
    progress = _StopAt("datastore")
    with pytest.raises(KeyboardInterrupt):
        train(_config(models, tmp_path, [tmp_path / "c"]), progress=progress)
    assert any("skipped 1 of 2 corpus files" in n and "latin1.txt" in n for n in progress.notes)


class _Stages(_StopAt):
    """Records (stage, cached) and stops at `at`."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.seen: list[tuple[str, bool]] = []

    def stage(self, name, *, total, unit, cached=False):
        self.seen.append((name, cached))
        super().stage(name, total=total, unit=unit, cached=cached)


def test_reused_work_dir_with_other_data_settings(models, tmp_path):
    corpus = licence_files(["BSD"])
    with pytest.raises(KeyboardInterrupt):
        train(_config(models, tmp_path, corpus, k=4), progress=_StopAt("train"))
    with pytest.raises(WorkDirMismatchError, match=r"other settings: k=4 \(now 5\)") as e:
        train(_config(models, tmp_path, corpus, k=5), progress=_StopAt("train"))
    _one_line(e.value)
    with pytest.raises(WorkDirMismatchError, match="another corpus"):
        train(_config(models, tmp_path, licence_files(["Artistic"]), k=4), progress=_StopAt("train"))
    # training settings may differ: the datastore and kNN targets are reused, the training is its own
    progress = _Stages("train")
    with pytest.raises(KeyboardInterrupt):
        train(_config(models, tmp_path, corpus, k=4, beta=0.9, lr=1e-3), progress=progress)
    cached = dict(progress.seen)
    assert cached["datastore"] and cached["knn targets"] and cached["train"] is False


@pytest.mark.slow  # runs training's first stages twice
def test_eval_corpus_is_the_held_out_split(models, tmp_path):
    """--eval-corpus: every corpus document trains, every given one is held out, and a near-copy of a
    training document among them is reported."""
    from memreg.train.corpus import TokenArray
    from transformers import AutoTokenizer

    texts = licence_files(["BSD", "Artistic", "Apache-2.0"])
    (tmp_path / "held").mkdir()
    shutil.copy(texts[0], tmp_path / "held" / "copy-of-bsd.txt")  # a near-copy of a training document
    shutil.copy(licence_files(["MPL-2.0"])[0], tmp_path / "held" / "mpl.txt")
    progress = _Stages("datastore")
    with pytest.raises(KeyboardInterrupt):
        train(_config(models, tmp_path, texts, eval_corpus=[str(tmp_path / "held")]), progress=progress)
    again = _Stages("datastore")  # with a given split, the fraction changes nothing
    with pytest.raises(KeyboardInterrupt):
        train(_config(models, tmp_path, texts, eval_corpus=[str(tmp_path / "held")], eval_fraction=0.3), progress=again)
    assert dict(again.seen)["tokenize"] is True
    folder = next((tmp_path / "pkg.work").glob("corpus-*"))
    import json

    meta = json.loads((folder / "meta.json").read_text())
    assert meta["split"] == "given (--eval-corpus)" and meta["eval_documents"] == 2 and meta["eval_near_copies"] == 1
    tok = AutoTokenizer.from_pretrained(str(models / "tok"))
    n_train = sum(len(tok(p.read_text(), add_special_tokens=False)["input_ids"]) + 1 for p in texts)
    assert len(TokenArray(folder, "train")) == n_train == meta["train_tokens"]
    assert any("1 of 2 --eval-corpus documents have a near-copy" in n for n in progress.notes)
    result = train(_config(models, tmp_path, texts, eval_corpus=[str(tmp_path / "held")]))  # resumes, packages
    validation = result.card.training.extra["validation"]
    assert validation["documents"] == 2 and validation["tokens"] == meta["eval_tokens"] == result.eval_tokens
    assert result.card.training.corpus_digest.startswith("sha256:")


def test_empty_eval_corpus(models, tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(EmptyCorpusError, match="evaluation corpus") as e:
        train(_config(models, tmp_path, licence_files(["BSD"]), eval_corpus=[str(tmp_path / "none")]))
    _one_line(e.value)


def test_tokenizer_mismatch_is_refused_before_any_work(models, tmp_path):
    make_model_of_another_tokenizer(tmp_path)
    cfg = TrainConfig(corpus=[str(p) for p in licence_files(["BSD"])], teacher=str(tmp_path / "other-model"),
                      init=str(models / "init"), out=tmp_path / "pkg")
    with pytest.raises(TokenizerMismatchError, match="teacher and init tokenizers differ") as e:
        train(cfg)
    _one_line(e.value)
    assert not (tmp_path / "pkg.work").exists()


def test_bad_block_size(models, tmp_path):
    with pytest.raises(InvalidTrainSettingError, match="--block-size 4096 is longer than the teacher's context of 128"):
        train(TrainConfig(corpus=[str(licence_files(["BSD"])[0])], teacher=str(models / "teacher"),
                          init=str(models / "init"), out=tmp_path / "p", block_size=4096))


@pytest.mark.parametrize("ref", ["/no/such/teacher", "./models/memreg-base-larg", "~/missing-model", "a/b/c", "models/x/"])
def test_mistyped_model_path_fails_at_once_instead_of_asking_the_hub(models, tmp_path, ref):
    """Offline, transformers retried the Hub for ~52 s before failing on a path that does not exist."""
    from memreg.registry.errors import ModelNotFoundError

    cfg = TrainConfig(corpus=[str(p) for p in licence_files(["BSD"])], teacher=ref, init=str(models / "init"),
                      out=tmp_path / "pkg")
    with pytest.raises(ModelNotFoundError, match="no such file or folder") as e:
        train(cfg)
    assert ref in _one_line(e.value)
    assert not (tmp_path / "pkg").exists() and not (tmp_path / "pkg.work").exists()
