"""`memreg train --index-on-disk`: an IVF index whose inverted lists live in index.ivfdata gives the
kNN targets of the same index in memory, stays cached, and keeps `--json` output clean."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import faiss  # noqa: F401  (a missing dependency must fail, not skip)
import typer  # noqa: F401  (a missing dependency must fail, not skip)

from licences import licence_files
from train_helpers import make_teacher_and_init, single_thread_fixture

from memreg.train import TrainConfig, train
from memreg.train.knn import open_targets

pytestmark = pytest.mark.slow  # trains a memory twice

_one_thread = single_thread_fixture()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_teacher_and_init(tmp_path_factory.mktemp("ondisk"))
    (root / "corpus").mkdir()
    for p in licence_files(["BSD", "Apache-2.0"]):
        shutil.copy(p, root / "corpus" / p.name)
    return root


def test_on_disk_index_gives_the_targets_of_the_index_in_memory(setup, tmp_path):
    from typer.testing import CliRunner

    from memreg.cli.train import train as train_command

    common = ["--k", "16", "--block-size", "32", "--steps", "2", "--batch-size", "4", "--eval-fraction", "0.1",
              "--seed", "3", "--index", "IVF8,Flat"]
    app = typer.Typer()
    app.command()(train_command)
    args = [str(setup / "corpus"), "--teacher", str(setup / "teacher"), "--init", str(setup / "init"),
            "--out", str(tmp_path / "disk"), *common, "--index-on-disk", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["data"]  # faiss's prints about the lists file stayed off stdout
    assert summary["index"] == "IVF8,Flat"
    files = {p.name for p in next((tmp_path / "disk.work").glob("index-*")).iterdir()}
    assert {"index.faiss", "index.ivfdata"} <= files and not [f for f in files if "shard" in f]

    in_memory = TrainConfig(corpus=[str(setup / "corpus")], teacher=str(setup / "teacher"), init=str(setup / "init"),
                            out=tmp_path / "ram", k=16, block_size=32, steps=2, batch_size=4, eval_fraction=0.1,
                            seed=3, index="IVF8,Flat", index_on_disk=False)
    train(in_memory)
    assert not list(next((tmp_path / "ram.work").glob("index-*")).glob("*.ivfdata"))
    (disk_ids, disk_p), (ram_ids, ram_p) = (open_targets(next((tmp_path / f"{x}.work").glob("knn-*")))
                                            for x in ("disk", "ram"))
    np.testing.assert_array_equal(disk_ids, ram_ids)
    np.testing.assert_array_equal(disk_p, ram_p)

    # the same settings again: the on-disk index stage is cached, and the kNN stage reads it back
    shutil.rmtree(next((tmp_path / "disk.work").glob("knn-*")))
    again = train(in_memory.model_copy(update={"out": tmp_path / "disk", "index_on_disk": True}))
    assert again.index == "IVF8,Flat" and not [n for n in again.notes if "inverted lists on disk" in n]
    np.testing.assert_array_equal(open_targets(next((tmp_path / "disk.work").glob("knn-*")))[0], ram_ids)
