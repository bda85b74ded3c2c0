"""`memreg train` under `accelerate launch` with 2 CPU processes (gloo) against one process: the
datastore and the kNN targets are split across the processes and equal the single-process ones row
for row; training is torch DDP through accelerate and ends at the single-process weights; the
held-out evaluation and the validation inside training are split too and give the same numbers.

Two processes with --grad-accum 2 see exactly the micro-batches one process with --grad-accum 4 sees
in each step (process r takes micro-batch (step*2 + micro)*2 + r), so the runs are the same
computation up to the order of one sum: one process adds the 4 micro-batches' gradients in order,
DDP adds process 0's two, process 1's two, then the two sums. Float32 addition is not associative,
so the weights agree to WEIGHT_ATOL, not bit for bit. The init has no dropout: each process would
draw its own masks, another run than one process's.
"""

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

from licences import licence_files  # noqa: E402
from train_helpers import make_model, make_tokenizer  # noqa: E402

ACCELERATE = Path(sys.executable).with_name("accelerate")
# Measured: max |w1 - w2| ~1e-6, on a few attention key biases (their true gradient is 0: softmax
# ignores them, so the gradient is rounding noise that AdamW scales up); every other weight < 1e-7.
# The weights are ~0.1: 1e-5 is far below what one wrong micro-batch or unaveraged gradient does (~1e-3).
WEIGHT_ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _models(root: Path) -> None:
    make_tokenizer(root / "tok")
    make_model(root / "teacher", "gpt2", tokenizer_from=root / "tok", hidden=48, seed=1)
    make_model(root / "init", "gpt2", tokenizer_from=root / "tok", seed=2)
    cfg = json.loads((root / "init" / "config.json").read_text())
    cfg.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # see the module docstring
    (root / "init" / "config.json").write_text(json.dumps(cfg))


def _launch_two(tmp_path: Path, corpus: Path, out: Path, settings: dict) -> None:
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "memreg", "train", str(corpus), "--teacher", str(tmp_path / "teacher"), "--init",
           str(tmp_path / "init"), "--out", str(out), "--device", "cpu", "--quiet",
           *[f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _meta(work: Path, stage: str) -> dict:
    return json.loads((next(work.glob(f"{stage}-*")) / "meta.json").read_text())


@pytest.mark.slow  # ~60 s alone on 2 cores, more when they are shared
@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate command is not installed next to python")
def test_two_processes_split_every_stage_and_match_one_process(tmp_path):
    from memreg.schemas import PackageCard
    from memreg.train import TrainConfig, train

    _models(tmp_path)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for p in licence_files(["BSD", "Artistic", "MPL-2.0"]):
        shutil.copy(p, corpus / p.name)
    settings = dict(block_size=32, k=16, steps=6, batch_size=2, eval_fraction=0.2, eval_every=2, seed=0)
    single = train(TrainConfig(corpus=[str(corpus)], teacher=str(tmp_path / "teacher"), init=str(tmp_path / "init"),
                               out=tmp_path / "single", grad_accum=4, **settings))
    out = tmp_path / "ddp"
    _launch_two(tmp_path, corpus, out, {**settings, "grad_accum": 2})
    work, work1 = Path(str(out) + ".work"), single.work_dir

    _check_datastore_and_knn(work, work1)
    _check_weights(out, tmp_path / "single", tmp_path / "init")
    _check_validation(_meta(work, "train"), _meta(work1, "train"))
    _check_evaluation(_meta(work, "eval"), _meta(work1, "eval"))
    card = PackageCard.model_validate_json((out / "memreg.json").read_text())
    assert card.training.extra["processes"] == {"datastore": 2, "knn": 2, "train": 2}
    assert card.training.datastore_size == single.datastore_size
    assert card.training.steps == 6 and card.metrics.recommended_weight is not None


def _check_datastore_and_knn(work: Path, work1: Path) -> None:
    """Each process wrote its own rows of the datastore and searched its own batches of rows for the
    kNN targets; together they equal one process's, bit for bit."""
    from memreg.train.datastore import open_datastore
    from memreg.train.knn import open_targets

    keys2, values2 = open_datastore(next(work.glob("datastore-*")))
    keys1, values1 = open_datastore(next(work1.glob("datastore-*")))
    assert keys2.shape == keys1.shape and np.array_equal(values1, values2) and np.array_equal(keys1, keys2)
    knn2, knn1 = next(work.glob("knn-*")), next(work1.glob("knn-*"))
    for got, want in zip(open_targets(knn2), open_targets(knn1)):
        assert np.array_equal(got, want)
    for stage in (next(work.glob("datastore-*")), knn2):
        assert sorted(p.name for p in stage.glob("progress-*")) == ["progress-0-of-2.json", "progress-1-of-2.json"]
    assert _meta(work, "knn")["effective_neighbours"] == pytest.approx(_meta(work1, "knn")["effective_neighbours"],
                                                                       rel=1e-9)


def _check_weights(two: Path, one: Path, init: Path) -> None:
    """DDP ends where one process with twice the accumulation ends (to WEIGHT_ATOL: the order of a sum)."""
    from safetensors.torch import load_file

    w2, w1, w0 = (load_file(folder / "model.safetensors") for folder in (two, one, init))
    assert w2.keys() == w1.keys()
    worst = max(float((w2[k] - w1[k]).abs().max()) for k in w1)
    print(f"max |w(2 processes) - w(1 process)| = {worst:.3g}")
    assert worst <= WEIGHT_ATOL
    moved = max(float((w1[k] - w0[k]).abs().max()) for k in w0 if k in w1)
    assert moved > 100 * WEIGHT_ATOL  # the comparison is not vacuous: training moved the weights


def _check_validation(t2: dict, t1: dict) -> None:
    """The validation inside training, split across the processes: the same curve, so the same stop."""
    assert (t2["processes"], t1["processes"]) == (2, 1)
    assert [p["step"] for p in t2["curve"]] == [p["step"] for p in t1["curve"]] == [0, 2, 4, 6]
    assert t2["curve"][0] == t1["curve"][0]  # the init, scored in shares: bit for bit
    for p2, p1 in zip(t2["curve"], t1["curve"]):
        assert p2 == pytest.approx(p1, rel=1e-5)
    assert (t2["best_step"], t2["stop_reason"]) == (t1["best_step"], t1["stop_reason"])


def _check_evaluation(e2: dict, e1: dict) -> None:
    """The held-out evaluation, split across the processes: each scored a share, and the same models
    (teacher, init) score the same, bit for bit; the memory to the weights' tolerance."""
    n = e1["evaluations"][0]["tokens"]
    assert e1["tokens_per_process"] == [n] and sum(e2["tokens_per_process"]) == n
    assert min(e2["tokens_per_process"]) > n // 4  # both processes scored a share
    for role in ("teacher", "init"):
        assert e2["perplexity"][role] == e1["perplexity"][role]
    assert e2["perplexity"]["memory"] == pytest.approx(e1["perplexity"]["memory"], rel=1e-5)
    for a, b in zip(e2["evaluations"], e1["evaluations"]):
        assert a["perplexity_base"] == b["perplexity_base"]
        assert a["sweep"] == pytest.approx(b["sweep"], rel=1e-5)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    make_tokenizer(root / "tok")
    return make_model(root / "m", "gpt2", tokenizer_from=root / "tok", seed=3).eval()


@pytest.mark.slow  # scores every shard and the whole text
@pytest.mark.parametrize("world", [2, 3])
def test_shards_of_the_evaluation_windows_cover_every_token_once_with_the_single_process_values(tiny_lm, world):
    from memreg.evaluate import target_log_probs

    model = tiny_lm
    ids = np.random.default_rng(0).integers(0, 400, 300)
    kw = dict(context=32, stride=16, vocab_size=400, batch_size=3)
    whole = target_log_probs(model, ids, **kw)
    parts = [target_log_probs(model, ids, shard=(r, world), **kw) for r in range(world)]
    scored = np.stack([~np.isnan(p) for p in parts])
    assert (scored.sum(axis=0) == 1).all()  # each token scored by exactly one process
    assert all(s.any() for s in scored)  # and every process has a share
    merged = np.where(scored, np.stack(parts), 0.0).sum(axis=0)  # what Dist.merge_scores computes
    assert np.array_equal(merged, whole)
    with pytest.raises(ValueError, match="rank"):
        target_log_probs(model, ids, shard=(world, world), **kw)
