"""Corpus reading: folders, globs, JSONL; binary and non-UTF-8 files skipped and counted; split by document."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from licences import licence_files
from train_helpers import TEXTS

from memreg.train.corpus import (CorpusReport, Document, TokenArray, corpus_digest, iter_documents,
                                 split_documents, write_tokens)
from memreg.train.errors import CorpusError


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for p in licence_files(["BSD", "Apache-2.0"]):
        shutil.copy(p, root / p.name)
    shutil.copy(licence_files(["Artistic"])[0], root / "sub" / "Artistic")
    (root / "latin1.txt").write_bytes("Licence: \xe9t\xe9".encode("latin-1"))
    (root / "blob.bin").write_bytes(b"\x7fELF\x00\x01\x02")
    (root / ".hidden").write_text("ignored")
    (root / "empty.txt").write_text("  \n")
    return root


def test_folder_reads_text_and_counts_skipped(folder):
    report = CorpusReport()
    docs = list(iter_documents([str(folder)], report))
    assert [d.source.rsplit("/", 1)[-1] for d in docs] == ["Apache-2.0", "BSD", "Artistic"]
    assert report.files == 6 and report.documents == 3
    assert len(report.skipped) == 2
    assert any("latin1.txt (not UTF-8" in s for s in report.skipped)
    assert any("blob.bin (binary)" in s for s in report.skipped)


def test_glob_and_jsonl(tmp_path, folder):
    lines = [json.dumps({"text": p.read_text(), "id": i}) for i, p in enumerate(licence_files(["BSD", "MPL-2.0"]))]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n\n")
    report = CorpusReport()
    docs = list(iter_documents([str(folder / "*-2.0"), str(tmp_path / "docs.jsonl")], report))
    assert [d.source.rsplit("/", 1)[-1] for d in docs] == ["Apache-2.0", "docs.jsonl:1", "docs.jsonl:2"]
    assert docs[1].text == licence_files(["BSD"])[0].read_text()


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(CorpusError, match="no-such"):
        list(iter_documents([str(tmp_path / "no-such*.txt")], CorpusReport()))
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:1 has no string field 'text'"):
        list(iter_documents([str(tmp_path / "bad.jsonl")], CorpusReport()))


def test_split_is_by_document_deterministic_and_small():
    docs = [Document(p.name, p.read_text()) for p in TEXTS]
    train, held = split_documents(docs, eval_fraction=0.2, seed=0)
    assert held and train and not set(train) & set(held) and sorted(train + held) == list(range(len(docs)))
    assert sum(len(docs[i].text) for i in held) <= 0.2 * sum(len(d.text) for d in docs)
    assert split_documents(docs, eval_fraction=0.2, seed=0) == (train, held)
    assert split_documents(docs, eval_fraction=0.0, seed=0) == (list(range(len(docs))), [])


def test_digest_names_content_not_paths():
    a = [Document("x", "one"), Document("y", "two")]
    assert corpus_digest(a) == corpus_digest([Document("elsewhere", "one"), Document("z", "two")])
    assert corpus_digest(a) != corpus_digest([Document("x", "onet"), Document("y", "wo")])


def test_token_shards_roundtrip(tmp_path, monkeypatch):
    import memreg.train.corpus as corpus

    monkeypatch.setattr(corpus, "SHARD_TOKENS", 5)
    docs = [Document("a", "abcdefg"), Document("b", "hij")]
    n = write_tokens(tmp_path, "train", docs, lambda t: [ord(c) for c in t], 0)
    arr = TokenArray(tmp_path, "train")
    assert n == len(arr) == 12 and len(arr.shards) == 3
    assert arr.slice(3, 11).tolist() == [ord(c) for c in "defg"] + [0] + [ord(c) for c in "hij"]
    assert arr.shards[0].dtype == np.uint32


def test_hugging_face_dataset_saved_to_disk(tmp_path):
    import datasets

    texts = [p.read_text() for p in TEXTS[:5]]
    datasets.Dataset.from_dict({"text": texts, "id": list(range(5))}).save_to_disk(tmp_path / "single")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:3]}),
                          "test": datasets.Dataset.from_dict({"text": texts[3:]})}).save_to_disk(tmp_path / "dict")
    report = CorpusReport()
    docs = list(iter_documents([str(tmp_path / "single")], report))
    assert [d.text for d in docs] == texts and report.documents == 5
    assert [d.text for d in iter_documents([str(tmp_path / "dict")], CorpusReport())] == texts[:3]  # the train split
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(tmp_path / "no-text")
    with pytest.raises(CorpusError, match="no 'text' column"):
        list(iter_documents([str(tmp_path / "no-text")], CorpusReport()))
