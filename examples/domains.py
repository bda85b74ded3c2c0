"""Domain corpora from text that ships with this machine, split into train/ and heldout/ folders.

    law        Debian's licence texts and the copyright files of installed packages
    code       Python standard-library modules
    changelog  Debian package changelogs (/usr/share/doc/*/changelog.Debian.gz)

Documents are grouped into near-duplicate clusters (memreg.train.neardup: word 8-grams) before the
split, so no held-out document has a near-copy in train/ — the same rule `memreg train` uses for
its own evaluation split. Long documents are cut to `max_doc_bytes` so a small budget still spans
many documents. The split is a function of the documents alone (a hash of each cluster's first
document), so every run and every machine with the same files gets the same folders.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sysconfig
from pathlib import Path

DOMAINS = ("law", "code", "changelog")


def _sources(domain: str) -> list[tuple[str, Path]]:
    if domain == "law":
        return ([(f"common-licenses-{p.name}.txt", p) for p in sorted(Path("/usr/share/common-licenses").iterdir())]
                + [(f"{p.parent.name}.copyright.txt", p) for p in sorted(Path("/usr/share/doc").glob("*/copyright"))])
    if domain == "code":
        return [(p.name, p) for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))]
    if domain == "changelog":
        return [(f"{p.parent.name}.changelog.txt", p) for p in sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz"))]
    raise SystemExit(f"unknown domain {domain!r}: choose one of {', '.join(DOMAINS)}")


def _documents(domain: str) -> dict[str, str]:
    docs: dict[str, str] = {}
    seen: set[str] = set()
    for name, path in _sources(domain):
        try:
            data = path.read_bytes()
            text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # not UTF-8 (or unreadable): skipped, as memreg train would
        if text.strip() and text not in seen:  # many packages ship identical files
            seen.add(text)
            docs[name] = text
    return docs


def build_domain(domain: str, work: Path, *, train_bytes: int = 400_000, heldout_bytes: int = 120_000,
                 max_doc_bytes: int = 16_000) -> tuple[Path, Path]:
    """Write work/corpus/{train,heldout}/ (once; reused when present) and return both folders."""
    from memreg.train.neardup import near_duplicate_clusters, ngram_overlap

    root = work / "corpus"
    train, heldout = root / "train", root / "heldout"
    if (root / "split.json").is_file():
        return train, heldout
    docs = {name: _cut(text, max_doc_bytes) for name, text in _documents(domain).items()}
    names = sorted(docs)
    clusters = near_duplicate_clusters([docs[n] for n in names])
    members: dict[int, list[str]] = {}
    for name, c in zip(names, clusters):
        members.setdefault(c, []).append(name)
    order = sorted(members.values(), key=lambda m: hashlib.sha256(m[0].encode()).hexdigest())
    budget = {"train": train_bytes, "heldout": heldout_bytes}
    split: dict[str, list[str]] = {"train": [], "heldout": []}
    for i, group in enumerate(order):
        side = "heldout" if i % 4 == 0 and len(group) == 1 else "train"  # near-copies never held out
        size = sum(len(docs[n].encode()) for n in group)
        if size <= budget[side]:
            budget[side] -= size
            split[side].extend(group)
    for side, folder in (("train", train), ("heldout", heldout)):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in split[side]:
            (folder / name).write_text(docs[name])
    overlap = ngram_overlap([docs[n] for n in split["train"]], [docs[n] for n in split["heldout"]])
    (root / "split.json").write_text(json.dumps({"domain": domain, "train": len(split["train"]),
                                                 "heldout": len(split["heldout"]), "heldout_8gram_overlap": overlap}))
    return train, heldout


def _cut(text: str, limit: int) -> str:
    data = text.encode("utf-8")[:limit]
    return data.decode("utf-8", errors="ignore")
