"""Splits for bench/quality.py: train / validation / held-out documents drawn by near-duplicate cluster.

The same machinery as `memreg train`'s own split (memreg.train.neardup: word 8-gram Jaccard >= 0.5,
clusters by union-find): a document with a near-copy elsewhere is kept in training with its cluster,
so no validation or held-out document has a near-copy in training. Documents are cut to
`doc_max_tokens` first, so that a small token budget still spans many documents (each split must
hold >= 20, the unit the confidence intervals resample). Which split a singleton cluster joins is a
hash of its source name: every machine with the same files draws the same split.

What a document split cannot remove (licence passages or stdlib idioms shared below the pairwise
threshold) is measured, not hidden: the share of validation / held-out 8-gram positions that occur
in the training text.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIN_DOCS = 20
SPLITS = ("train", "valid", "test")


def domain_documents(domain: str) -> dict[str, str]:
    """source name -> text, for the domains of examples/domains.py (law, code, changelog)."""
    sys.path.insert(0, str(ROOT / "examples"))
    from domains import _documents  # noqa: E402  (the examples' reader: UTF-8 only, exact copies dropped)

    return _documents(domain)


def _side(name: str) -> str:
    """A singleton cluster's split, from a hash of its source: 1 in 5 held out, 1 in 5 validation."""
    b = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 5
    return {0: "test", 1: "valid"}.get(b, "train")


def make_splits(out: Path, domain: str, tok, caps: dict[str, int], doc_max_tokens: int, min_docs: int = MIN_DOCS,
                documents: dict[str, str] | None = None) -> dict:
    """Write out/{train,valid,test}.jsonl ({"source", "text"} per line) and return the split's report.
    `documents` (source name -> text) replaces the domain's own reader (examples/domains.py)."""
    from memreg.train.neardup import near_duplicate_clusters, ngram_overlap

    report_path = out / "split.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    docs = {}
    for name, text in (domain_documents(domain) if documents is None else documents).items():
        ids = tok(text, add_special_tokens=False)["input_ids"][:doc_max_tokens]
        if len(ids) >= 16:  # a few words are no document to score
            docs[name] = tok.decode(ids)
    names = sorted(docs)
    labels = near_duplicate_clusters([docs[n] for n in names])
    members: dict[int, list[str]] = {}
    for name, label in zip(names, labels):
        members.setdefault(label, []).append(name)
    order = sorted(members.values(), key=lambda m: hashlib.sha256(m[0].encode()).hexdigest())
    left = dict(caps)
    chosen: dict[str, list[str]] = {s: [] for s in SPLITS}
    for group in order:
        side = _side(group[0]) if len(group) == 1 else "train"  # near-copies stay in training together
        size = sum(len(tok(docs[n], add_special_tokens=False)["input_ids"]) + 1 for n in group)
        if size <= left[side]:
            left[side] -= size
            chosen[side].extend(group)
    report: dict = {"domain": domain, "documents_available": len(docs), "clusters": len(order),
                    "near_duplicate_documents": sum(len(g) for g in order if len(g) > 1),
                    "doc_max_tokens": doc_max_tokens, "caps": caps}
    out.mkdir(parents=True, exist_ok=True)
    for side in SPLITS:
        if len(chosen[side]) < min_docs:
            raise SystemExit(f"{domain}: only {len(chosen[side])} {side} documents fit the caps {caps} "
                             f"(need {min_docs}): raise the {side} cap or lower --doc-max-tokens")
        with open(out / f"{side}.jsonl", "w") as fh:
            for n in chosen[side]:
                fh.write(json.dumps({"source": n, "text": docs[n]}) + "\n")
        report[side] = {"documents": len(chosen[side]), "tokens": caps[side] - left[side]}
    train_texts = [docs[n] for n in chosen["train"]]
    for side in ("valid", "test"):
        report[side]["8gram_overlap_with_train"] = round(ngram_overlap(train_texts, [docs[n] for n in chosen[side]]), 4)
    report_path.write_text(json.dumps(report, indent=1))
    return report


def read_split(out: Path, side: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{side}.jsonl").read_text().splitlines()]


def token_ids(out: Path, side: str, tok, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, doc_of_target): the split's documents tokenized with `tok`, each followed by EOS as memreg
    train writes them, and for each scored position t = 1..n-1 the index of its document (for the
    bootstrap). Cached per tokenizer `key`."""
    path = out / f"{side}-{key}.npz"
    if path.exists():
        z = np.load(path)
        return z["ids"], z["doc"]
    ids, doc = [], []
    for i, d in enumerate(read_split(out, side)):
        t = tok(d["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids.extend(t)
        doc.extend([i] * len(t))
    ids_a, doc_a = np.asarray(ids, dtype=np.int64), np.asarray(doc[1:], dtype=np.int64)
    np.savez(path, ids=ids_a, doc=doc_a)
    return ids_a, doc_a


def general_ids(work: Path, tok, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """General text: held-out pages of the bases' own pretraining corpus (man pages + pydoc), as the
    forgetting check; one 'document' per page."""
    import subprocess

    path = work / "general.npz"
    if path.exists():
        z = np.load(path)
        return z["ids"], z["doc"]
    valid = ROOT / ".device" / "corpus" / "valid.txt"
    if not valid.exists():  # the corpus another scale of this benchmark already built, else build it
        valid = next(iter(sorted((ROOT / "runs").glob("quality*/general/valid.txt"))), work / "general" / "valid.txt")
        if not valid.exists():
            subprocess.run([sys.executable, str(ROOT / "examples" / "bases" / "build_bases.py"), "corpus",
                            "--out", str(work / "general")], check=True)
    ids, doc = [], []
    pages = [p for p in valid.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    pages.sort(key=lambda p: hashlib.sha256(p.encode()).hexdigest())  # not the corpus order: many sources
    for i, p in enumerate(pages):
        t = tok(p, add_special_tokens=False)["input_ids"][:256] + [tok.eos_token_id]
        ids.extend(t)
        doc.extend([i] * len(t))
        if len(ids) >= n_tokens:
            break
    ids_a, doc_a = np.asarray(ids, dtype=np.int64), np.asarray(doc[1:], dtype=np.int64)
    np.savez(path, ids=ids_a, doc=doc_a)
    return ids_a, doc_a
