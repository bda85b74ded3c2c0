"""`memreg train` under `accelerate launch` with 2 CPU processes: the datastore is split across the
processes and equals the single-process one row for row; training is data parallel (gradients
all-reduced over gloo); process 0 writes a package transformers opens."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("faiss")
pytest.importorskip("accelerate")

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from train_helpers import licence_texts, make_model, make_tokenizer  # noqa: E402

ACCELERATE = Path(sys.executable).with_name("accelerate")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~55 s alone on 2 cores, more when they are shared
@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate command is not installed next to python")
def test_two_process_accelerate_launch_matches_the_single_process_datastore(tmp_path):
    from transformers import AutoModelForCausalLM

    from memreg.schemas import PackageCard
    from memreg.train import TrainConfig, train
    from memreg.train.datastore import open_datastore

    make_tokenizer(tmp_path / "tok")
    make_model(tmp_path / "teacher", "gpt2", tokenizer_from=tmp_path / "tok", hidden=48, seed=1)
    make_model(tmp_path / "init", "gpt2", tokenizer_from=tmp_path / "tok", seed=2)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for p in licence_texts(["BSD", "Artistic", "MPL-2.0"]):
        shutil.copy(p, corpus / p.name)
    settings = dict(block_size=32, k=16, steps=6, batch_size=2, eval_fraction=0.2, seed=0)

    single = train(TrainConfig(corpus=[str(corpus)], teacher=str(tmp_path / "teacher"), init=str(tmp_path / "init"),
                               out=tmp_path / "single", **settings))

    out = tmp_path / "ddp"
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "memreg", "train", str(corpus), "--teacher", str(tmp_path / "teacher"), "--init",
           str(tmp_path / "init"), "--out", str(out), "--device", "cpu", "--quiet",
           *[f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    work = Path(str(out) + ".work")
    keys2, values2 = open_datastore(next(work.glob("datastore-*")))
    keys1, values1 = open_datastore(next(single.work_dir.glob("datastore-*")))
    assert keys2.shape == keys1.shape and np.array_equal(values1, values2)
    assert np.array_equal(keys1, keys2)  # both processes' rows, each written once
    assert sorted(p.name for p in next(work.glob("datastore-*")).glob("progress-*")) == [
        "progress-0-of-2.json", "progress-1-of-2.json"]

    # kNN targets: each process searched its own batches of rows; together they equal one process's
    from memreg.train.knn import open_targets

    knn2, knn1 = next(work.glob("knn-*")), next(single.work_dir.glob("knn-*"))
    for got, want in zip(open_targets(knn2), open_targets(knn1)):
        assert np.array_equal(got, want)
    assert sorted(p.name for p in knn2.glob("progress-*")) == ["progress-0-of-2.json", "progress-1-of-2.json"]
    meta2, meta1 = (json.loads((d / "meta.json").read_text()) for d in (knn2, knn1))
    assert meta2["effective_neighbours"] == pytest.approx(meta1["effective_neighbours"], rel=1e-9)

    card = PackageCard.model_validate_json((out / "memreg.json").read_text())
    assert card.training.extra["processes"] == {"datastore": 2, "knn": 2, "train": 2}
    assert card.training.datastore_size == single.datastore_size
    assert card.training.steps == 6 and card.metrics.recommended_weight is not None
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 400
    # data parallel: the same 6 steps saw twice the blocks, so the weights differ from the single run
    assert not torch.equal(model.transformer.wte.weight,
                           AutoModelForCausalLM.from_pretrained(tmp_path / "single").transformer.wte.weight)
