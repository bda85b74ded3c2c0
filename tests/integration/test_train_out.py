"""Issue 23: `memreg train --out` refuses a non-empty folder that is not its own package (exit 2,
one line, nothing touched) unless --overwrite; the same run repeated over its own package still works."""

from __future__ import annotations

import json
import shutil

import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import faiss  # noqa: F401  (a missing dependency must fail, not skip)

from conftest import memreg_in_process
from licences import licence_files
from train_helpers import make_teacher_and_init, single_thread_fixture

pytestmark = pytest.mark.slow  # trains a memory through the CLI

_one_thread = single_thread_fixture()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_teacher_and_init(tmp_path_factory.mktemp("out"))
    corpus = root / "corpus"
    corpus.mkdir()
    for p in licence_files(["BSD", "Artistic"]):
        shutil.copy(p, corpus / p.name)
    return root


def _args(setup, out, *extra: str, teacher: str = "teacher") -> list[str]:
    return ["train", str(setup / "corpus"), "--teacher", str(setup / teacher), "--init", str(setup / "init"),
            "--out", str(out), "--k", "16", "--block-size", "32", "--steps", "3", "--batch-size", "4",
            "--eval-fraction", "0.1", "--name", "law", "--version", "0.1.0", *extra]


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_of_other_files_is_refused_with_exit_2_and_left_as_it_was(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a week of work")
    code, stdout, err = memreg_in_process(monkeypatch, capsys, *_args(setup, out, "--quiet"))
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: --out {out} already exists and is not empty"), err
    assert "--overwrite" in err and "Traceback" not in err
    assert _snapshot(out) == {"notes.txt": b"a week of work"}
    assert not (tmp_path / "mine.work").exists()  # refused before any stage ran

    code, stdout, err = memreg_in_process(monkeypatch, capsys, *_args(setup, out, "--json"))
    assert code == 2 and stdout == ""
    doc = json.loads(err)
    assert doc["ok"] is False and doc["command"] == "train"
    assert doc["error"]["type"] == "OutputExistsError" and doc["error"]["exit_code"] == 2

    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = memreg_in_process(monkeypatch, capsys, *_args(setup, a_file, "--quiet"))
    assert code == 2 and "(a file)" in err and a_file.read_text() == "x"


def test_overwrite_replaces_it_and_the_same_run_again_needs_no_flag(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "law-memory"
    out.mkdir()
    (out / "notes.txt").write_text("old")
    code, _, err = memreg_in_process(monkeypatch, capsys, *_args(setup, out, "--quiet", "--overwrite"))
    assert code == 0, err
    assert (out / "memreg.json").is_file() and not (out / "notes.txt").exists()
    first = _snapshot(out)

    # the same command again (a run repeated, or resumed from its work folder) replaces its own package
    code, _, err = memreg_in_process(monkeypatch, capsys, *_args(setup, out, "--quiet"))
    assert code == 0, err
    second = _snapshot(out)
    assert second["model.safetensors"] == first["model.safetensors"]

    # a memory of another teacher is someone else's package: refused, untouched
    code, _, err = memreg_in_process(monkeypatch, capsys, *_args(setup, out, "--quiet", "--work-dir", str(tmp_path / "w2"), teacher="init"))
    assert code == 2 and "trained from teacher" in err and err.count("\n") == 1, err
    assert _snapshot(out) == second


def test_an_empty_folder_is_used(setup, tmp_path, capsys, monkeypatch):
    """Refused before anything loads when it must be; an empty folder is not refused (the run then
    stops at its first stage here, to keep the test short)."""
    import memreg.train.pipeline as pipeline

    out = tmp_path / "empty"
    out.mkdir()

    def stop(*a, **k):
        raise SystemExit(7)

    monkeypatch.setattr(pipeline, "_run_stages", stop)
    code, _, err = memreg_in_process(monkeypatch, capsys, *_args(setup, out, "--quiet"))
    assert code == 7, err
