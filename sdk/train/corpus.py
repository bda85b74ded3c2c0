"""Stage 1: read the corpus into documents, tokenize, and split off held-out documents.

Sources: text files, folders (every file below, sorted), glob patterns, JSONL/JSON-lines files
with a `text` field, and Hugging Face datasets saved with `save_to_disk` (needs `datasets`).
Binary and non-UTF-8 files are skipped and counted (never half-decoded), with a warning that
names them. Tokens are written as uint32 .npy shards, memory-mapped on read.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memreg.core.errors import CorpusError, TextFileTooLargeError

SHARD_TOKENS = 1 << 24  # 16 M tokens (64 MiB) per shard
_BINARY_SNIFF = 8192
# A text file is held whole while it is read (its bytes, then its str): past this it must be split.
# 1 GiB keeps the largest common single-file corpora (WikiText-103's 515 MB train file) whole.
MAX_TEXT_FILE_BYTES = 1 << 30


@dataclass(frozen=True)
class Document:
    source: str  # file path, or "path:line" for JSONL, or "dataset[i]"
    text: str


@dataclass
class CorpusReport:
    files: int = 0
    documents: int = 0
    skipped: list[str] = field(default_factory=list)  # "path (why)"


def iter_documents(sources: list[str], report: CorpusReport) -> Iterator[Document]:
    """Documents of every source, in a stable order (paths sorted within a folder or glob)."""
    for src in sources:
        path = Path(src)
        if _is_hf_dataset(path):
            yield from _dataset_documents(path, report)
            continue
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        elif path.is_file():
            files = [path]
        else:
            files = sorted(Path(p) for p in globlib.glob(src, recursive=True) if Path(p).is_file())
            if not files:
                raise CorpusError(f"corpus source {src!r} matches no file: give a file, folder or glob that exists")
        for f in files:
            yield from _file_documents(f, report)


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def read_text_file(path: Path, *, max_bytes: int = MAX_TEXT_FILE_BYTES) -> tuple[str | None, str | None]:
    """(text, None), or (None, why the file is skipped): binary (a NUL byte in its first 8 KiB) or
    not UTF-8. `memreg train` and `memreg eval` both read files through this, so both skip the same.

    The first 8 KiB alone decide "binary", so a binary file is never read whole; a text file longer
    than `max_bytes` is a TextFileTooLargeError before it is read (or once read, had it grown since)."""
    with open(path, "rb") as f:
        if b"\x00" in f.read(_BINARY_SNIFF):
            return None, "binary"
        if (size := os.fstat(f.fileno()).st_size) > max_bytes:
            raise _too_large(path, size, max_bytes)
        f.seek(0)
        raw = f.read()  # readall: sized from fstat, no second copy
    if len(raw) > max_bytes:
        raise _too_large(path, len(raw), max_bytes)
    try:
        return raw.decode("utf-8").removeprefix("\ufeff"), None
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8: byte {exc.start}"


def _too_large(path: Path, size: int, max_bytes: int) -> TextFileTooLargeError:
    def mib(n: int) -> str:
        return f"{n / 2**20:.2f}".rstrip("0").rstrip(".")

    return TextFileTooLargeError(
        f"{path} is {mib(size)} MiB, over the {mib(max_bytes)} MiB one text file may hold (it is read whole): "
        f"split it into a folder of smaller files, e.g. `split -C 256M {path} part-` (keeps lines whole, JSONL too)")


def _file_documents(path: Path, report: CorpusReport) -> Iterator[Document]:
    report.files += 1
    text, why = read_text_file(path)
    if text is None:
        report.skipped.append(f"{path} ({why})")
        return
    if path.suffix.lower() in (".jsonl", ".ndjson") or (path.suffix.lower() == ".json" and _looks_jsonl(text)):
        yield from _jsonl_documents(path, text, report)
    elif text.strip():
        report.documents += 1
        yield Document(str(path), text)


def _looks_jsonl(text: str) -> bool:
    first = text.lstrip()[:1]
    return first == "{" and "\n{" in text


def _jsonl_documents(path: Path, text: str, report: CorpusReport) -> Iterator[Document]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{lineno} is not JSON ({exc.msg}): JSONL needs one object per line") from None
        value = record.get("text") if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise CorpusError(f"{path}:{lineno} has no string field 'text': JSONL records need {{\"text\": ...}}")
        if value.strip():
            report.documents += 1
            yield Document(f"{path}:{lineno}", value)


def _is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def _dataset_documents(path: Path, report: CorpusReport) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"{path} is a Hugging Face dataset saved with save_to_disk: install `datasets` to read it"
        ) from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        splits = ["train"] if "train" in ds else sorted(ds)
    else:
        splits, ds = [""], {"": ds}
    for split in splits:
        part = ds[split]
        if "text" not in part.column_names:
            raise CorpusError(f"dataset {path} has no 'text' column (columns: {part.column_names})")
        report.files += 1
        for i, value in enumerate(part["text"]):
            if isinstance(value, str) and value.strip():
                report.documents += 1
                yield Document(f"{path}[{split}][{i}]" if split else f"{path}[{i}]", value)


def corpus_digest(documents: list[Document]) -> str:
    """sha256 over the documents' texts in order (paths excluded: moving a folder keeps the digest)."""
    h = hashlib.sha256()
    for d in documents:
        data = d.text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return "sha256:" + h.hexdigest()


def split_documents(documents: list[Document], *, eval_fraction: float, seed: int,
                    labels: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Indices of (train, eval) documents, holding out whole near-duplicate clusters
    (`neardup.near_duplicate_clusters`: chains of 8-gram Jaccard >= 0.5, fixed hash seed), so that no
    held-out document has a near-copy in training. Deterministic for given (documents, seed).

    Clusters are visited in the order of a seeded hash of their texts (a cluster's key is the least
    of its documents' keys, so a corpus without near-copies splits exactly as documents did before)
    and held out while they fit in `eval_fraction` of the characters; a big one never swallows the
    budget, and the last stays in training. If none fits, the smallest is held out. When all the
    documents form one cluster, none can be held out without its near-copies in training: all train,
    none held out, and the caller holds out the tail of the training text instead, with a warning.
    `neardup.split_report` measures the 8-gram overlap the split leaves."""
    if eval_fraction == 0 or len(documents) < 2:
        return list(range(len(documents))), []
    from memreg.train.neardup import near_duplicate_clusters

    if labels is None:  # the caller may pass near_duplicate_clusters' labels it needs for split_report too
        labels = near_duplicate_clusters([d.text for d in documents])
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    if len(members) < 2:
        return list(range(len(documents))), []
    keys = [hashlib.sha256(f"{seed}:".encode() + d.text.encode("utf-8")).digest() for d in documents]
    order = sorted(members.values(), key=lambda m: min(keys[i] for i in m))
    chars = [sum(len(documents[i].text) for i in m) for m in order]
    target = eval_fraction * sum(len(d.text) for d in documents)
    held, total = [], 0
    for c in range(len(order) - 1):  # clusters that fit in what is left of the target
        if total + chars[c] <= target:
            held.append(c)
            total += chars[c]
    if not held:  # every cluster is bigger than the target: hold out the smallest one
        held = [min(range(len(order) - 1), key=chars.__getitem__)]
    eval_idx = sorted(i for c in held for i in order[c])
    return sorted(set(range(len(documents))) - set(eval_idx)), eval_idx


def write_tokens(
    out_dir: Path, name: str, docs: list[Document], encode: Callable[[str], list[int]], eos_id: int | None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Tokenize documents into `<name>-NNNNN.npy` uint32 shards (an EOS token ends each document)."""
    buf: list[int] = []
    shard, written = 0, 0

    def flush(final: bool) -> None:
        nonlocal buf, shard, written
        while len(buf) >= SHARD_TOKENS or (final and buf):
            part, buf = buf[:SHARD_TOKENS], buf[SHARD_TOKENS:]
            np.save(out_dir / f"{name}-{shard:05d}.npy", np.asarray(part, dtype=np.uint32))
            shard += 1
            written += len(part)

    for d in docs:
        ids = encode(d.text)
        if eos_id is not None:
            ids = [*ids, eos_id]
        buf.extend(ids)
        flush(False)
        if progress is not None:
            progress(len(d.text.encode("utf-8")))
    flush(True)
    return written


class TokenArray:
    """Read-only view of uint32 shards as one int64-indexable sequence (memory-mapped)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.shards = [np.load(p, mmap_mode="r") for p in sorted(folder.glob(f"{name}-*.npy"))]
        self.offsets = np.cumsum([0, *[len(s) for s in self.shards]])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def slice(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, len(self))
        parts = []
        for i, s in enumerate(self.shards):
            a, b = self.offsets[i], self.offsets[i + 1]
            lo, hi = max(start, a), min(stop, b)
            if lo < hi:
                parts.append(np.asarray(s[lo - a : hi - a]))
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)
