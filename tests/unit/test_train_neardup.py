"""Near-duplicate clusters and the split by cluster: near copies of Debian's licence texts (words
changed, inserted, deleted; quoted in a copyright file behind a header) share a cluster and a side of
the split, different licences do not; exact 8-gram overlap; the same result in every process."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from licences import LICENSES
from memreg.train.corpus import Document, split_documents
from memreg.train.neardup import (BANDS, PERMS, ROWS, _candidates, _jaccard, ngram_overlap,
                                  near_duplicate_clusters, shingles, split_report)

# pairwise Jaccard of their 8-gram sets <= 0.4 (GPL-1 / GPL-2 is the closest pair, 0.39)
DISTINCT = ["Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.3", "GPL-1", "GPL-2", "GPL-3", "LGPL-2.1",
            "LGPL-3", "MPL-1.1", "MPL-2.0"]
HEADER = ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: {name}\n"
          "Files: *\nCopyright: 2009-2024 {name} developers\nLicense: {licence}\n")

word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=9)
relaxed = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def licence(name: str) -> str:
    path = LICENSES / name
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    return path.read_text()


def distinct() -> list[str]:
    return [n for n in DISTINCT if (LICENSES / n).is_file()]


@st.composite
def near_copy(draw, text: str) -> str:
    """`text` with up to one edit per 100 words (replace / insert / delete a word), and for a text of
    500 words or more, sometimes quoted the Debian way (indented, blank lines as " .") behind a
    copyright header of ~25 words (under 5% of the text)."""
    words = text.split(" ")
    for _ in range(draw(st.integers(0, max(1, len(words) // 100)))):
        i = draw(st.integers(0, len(words) - 1))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        if op == "delete":
            del words[i]
        elif op == "insert":
            words.insert(i, draw(word))
        else:
            words[i] = draw(word)
    copy = " ".join(words)
    if len(words) >= 500 and draw(st.booleans()):
        lines = [(" " + line) if line.strip() else " ." for line in copy.splitlines()]
        copy = HEADER.format(name=draw(word), licence=draw(word)) + "\n".join(lines)
    return copy


def families_of(data, names: list[str]) -> tuple[list[str], list[str]]:
    """Texts (each licence and 0-2 near copies of it, shuffled) and each text's licence name."""
    texts, family = [], []
    for name in names:
        copies = data.draw(st.integers(0, 2), label=f"copies of {name}")
        texts += [licence(name)] + [data.draw(near_copy(licence(name))) for _ in range(copies)]
        family += [name] * (1 + copies)
    order = data.draw(st.permutations(range(len(texts))))
    return [texts[i] for i in order], [family[i] for i in order]


def exact_clusters(texts: list[str], threshold: float = 0.5) -> list[int]:
    """Brute force: union of every pair with exact Jaccard >= threshold."""
    sets = [shingles(t) for t in texts]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            if len(sets[i]) and len(sets[j]) and _jaccard(sets[i], sets[j]) >= threshold:
                parent[find(j)] = find(i)
    return [find(i) for i in range(len(texts))]


def same_partition(a: list[int], b: list[int]) -> bool:
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))


# ------------------------------------------------------------------------------------------ shingles
def test_shingles_are_word_8grams_ignoring_case_and_punctuation():
    ten = "one two three four five six seven eight nine ten"
    assert shingles(ten).dtype == np.uint64 and len(shingles(ten)) == 3
    assert np.array_equal(shingles(ten), shingles("One, TWO - three;\n four five six seven eight nine ten!"))
    assert len(shingles(ten + " " + ten)) == 10  # 13 positions, the first 3 again at the end
    gpl = shingles(licence("GPL-2"))
    assert np.all(gpl[1:] > gpl[:-1])  # sorted, unique
    assert len(shingles("a b c")) == 1 and not np.array_equal(shingles("a b c"), shingles("a b"))
    assert len(shingles("?! --")) == 0 and len(shingles("")) == 0
    assert len(shingles(ten, n=2)) == 9


# ------------------------------------------------------------------------------------------ overlap
def test_ngram_overlap_on_hand_checked_texts():
    nine = "w0 w1 w2 w3 w4 w5 w6 w7 w8"  # two 8-grams: w0..w7 and w1..w8
    other = "x0 x1 x2 x3 x4 x5 x6 x7 x8"
    assert ngram_overlap([nine], [nine]) == 1.0
    assert ngram_overlap([other], [nine]) == 0.0
    assert ngram_overlap(["w0 w1 w2 w3 w4 w5 w6 w7"], [nine]) == 0.5
    assert ngram_overlap(["W0, w1 w2 W3 w4 w5 w6 w7 unrelated"], [nine]) == 0.5  # case and punctuation
    # positions count with multiplicity: 2 of 3 eval positions are in training (unique 8-grams: 1 of 2)
    eight = "w0 w1 w2 w3 w4 w5 w6 w7"
    assert ngram_overlap([eight], [eight, eight, other[:-3]]) == pytest.approx(2 / 3)
    assert ngram_overlap([eight], [eight + " " + eight]) == pytest.approx(2 / 9)  # 9 positions, w0..w7 twice
    assert ngram_overlap([nine], []) == 0.0 and ngram_overlap([nine], ["?!"]) == 0.0
    assert ngram_overlap([], [nine]) == 0.0
    assert ngram_overlap(["a b c"], ["a b c"]) == 1.0  # a text under 8 words is one shingle
    assert ngram_overlap([licence("GPL-2")], [licence("GPL-2")]) == 1.0
    assert ngram_overlap([licence("GPL-2")], [licence("Apache-2.0")]) < 0.05


# ------------------------------------------------------------------------------------------ clusters
@relaxed
@given(st.data())
def test_near_copies_share_a_cluster_and_different_licences_do_not(data):
    names = distinct()
    base = data.draw(st.sampled_from(names))
    copy = data.draw(near_copy(licence(base)))
    texts = [licence(n) for n in names]
    at = data.draw(st.integers(0, len(texts)))
    texts.insert(at, copy)
    labels = near_duplicate_clusters(texts)
    originals = [labels[i] for i in range(len(texts)) if i != at]
    assert len(set(originals)) == len(names)  # no two licences merged
    assert labels[at] == originals[names.index(base)]


def test_common_licences_cluster_as_brute_force_jaccard_does():
    files = sorted(p for p in LICENSES.iterdir() if p.is_file())
    texts = [p.read_text() for p in files]
    labels = near_duplicate_clusters(texts)
    assert same_partition(labels, exact_clusters(texts))
    by_name = dict(zip([p.name for p in files], labels))
    if {"GFDL-1.2", "GFDL-1.3", "LGPL-2", "LGPL-2.1"} <= set(by_name):  # versions that barely changed
        assert by_name["GFDL-1.2"] == by_name["GFDL-1.3"] and by_name["LGPL-2"] == by_name["LGPL-2.1"]
    firsts = [labels.index(c) for c in range(max(labels) + 1)]  # ids 0, 1, ... in order of first text
    assert firsts == sorted(firsts) and set(labels) == set(range(len(firsts)))


def test_identical_texts_share_a_cluster_whatever_their_length():
    texts = ["?!", "a b", licence("BSD"), "?!", "a b", "--", licence("BSD"), "A, B.", "a b c"]
    labels = near_duplicate_clusters(texts)
    assert labels == [0, 1, 2, 0, 1, 3, 2, 1, 4]
    assert near_duplicate_clusters([]) == [] and near_duplicate_clusters(["x"]) == [0]


def test_threshold_is_checked():
    with pytest.raises(ValueError, match=r"threshold=1.5 .* use 0 < threshold <= 1"):
        near_duplicate_clusters(["a"], threshold=1.5)
    with pytest.raises(ValueError, match="n=0"):
        shingles("a", n=0)


def test_boilerplate_buckets_stay_linear_and_are_not_merged():
    # every signature equal: one bucket of 1000 in every band -> each member with its next 16 only
    pairs = _candidates(np.zeros((1000, PERMS), dtype=np.uint64), np.random.default_rng(0).permutation(1000))
    assert ROWS * BANDS == PERMS and len(pairs) <= 1000 * 16
    parent = list(range(1000))  # still one chain through all of them

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(int(a))] = find(int(b))
    assert len({find(i) for i in range(1000)}) == 1
    # 300 "source files": the same licence header, then 3x as many words of their own (Jaccard ~0.2)
    rng = np.random.default_rng(1)
    vocab = sorted(set(licence("GPL-3").split()))
    header = licence("BSD")
    texts = [header + " ".join(rng.choice(vocab, size=3 * len(header.split()))) for _ in range(300)]
    assert len(set(near_duplicate_clusters(texts))) == 300


# ------------------------------------------------------------------------------------------ split
@pytest.mark.slow  # a property test over whole licence texts
@relaxed
@given(st.data(), st.integers(0, 2**32 - 1), st.floats(0.01, 0.6))
def test_split_never_separates_near_copies(data, seed, fraction):
    names = data.draw(st.lists(st.sampled_from(distinct()), min_size=2, max_size=6, unique=True))
    texts, family = families_of(data, names)
    docs = [Document(f"doc{i}", t) for i, t in enumerate(texts)]
    train, held = split_documents(docs, eval_fraction=fraction, seed=seed)
    assert sorted(train + held) == list(range(len(docs))) and not set(train) & set(held)
    for name in names:
        sides = {i in held for i in range(len(docs)) if family[i] == name}
        assert len(sides) == 1, f"near copies of {name} on both sides"
    assert train and held  # two or more clusters: one on each side
    chars = [len(t) for t in texts]
    if sum(chars[i] for i in held) > fraction * sum(chars):  # nothing fitted: the smallest family alone
        assert len({family[i] for i in held}) == 1
    assert split_documents(docs, eval_fraction=fraction, seed=seed) == (train, held)


def test_split_of_one_cluster_holds_nothing_out():
    base = licence("Apache-2.0")
    docs = [Document(str(i), base.replace("License", f"Licence{i}", 1)) for i in range(4)]
    assert split_documents(docs, eval_fraction=0.5, seed=0) == ([0, 1, 2, 3], [])


def old_split(documents: list[Document], eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """split_documents before near-duplicate clusters (git history), the reference for corpora without any."""
    order = sorted(range(len(documents)),
                   key=lambda i: hashlib.sha256(f"{seed}:".encode() + documents[i].text.encode("utf-8")).digest())
    target = eval_fraction * sum(len(d.text) for d in documents)
    held, chars = [], 0
    for i in order[:-1]:
        if chars + len(documents[i].text) <= target:
            held.append(i)
            chars += len(documents[i].text)
    if not held:
        held = [min(order[:-1], key=lambda i: len(documents[i].text))]
    return sorted(set(range(len(documents))) - set(held)), sorted(held)


@relaxed
@given(st.integers(0, 2**32 - 1), st.floats(0.01, 0.9))
def test_without_near_copies_the_split_is_the_old_one(seed, fraction):
    docs = [Document(n, licence(n)) for n in distinct()]
    assert split_documents(docs, eval_fraction=fraction, seed=seed) == old_split(docs, fraction, seed)


def test_split_report():
    texts = [licence("GPL-2"), licence("BSD"), licence("GPL-2").replace("Foundation", "Fondation"), licence("MPL-2.0")]
    docs = [Document(str(i), t) for i, t in enumerate(texts)]
    report = split_report(docs, [0, 2, 3], [1])
    assert report == {"eval_8gram_overlap": round(ngram_overlap([texts[0], texts[2], texts[3]], [texts[1]]), 6),
                      "clusters": 3, "largest_cluster": 2, "near_duplicate_documents": 2}
    assert split_report(docs, [1, 3], [0, 2])["eval_8gram_overlap"] < 0.05
    assert split_report(docs, [0, 1, 3], [2])["eval_8gram_overlap"] > 0.95  # what the split avoids


# ------------------------------------------------------------------------------------------ determinism
_PROBE = """
import json, sys
from memreg.train.corpus import Document, split_documents
from memreg.train.neardup import near_duplicate_clusters, shingles
texts = json.load(sys.stdin)
docs = [Document(str(i), t) for i, t in enumerate(texts)]
print(json.dumps({"shingles": shingles(texts[0])[:20].tolist(), "clusters": near_duplicate_clusters(texts),
                  "split": split_documents(docs, eval_fraction=0.3, seed=7)}))
"""


def test_same_result_in_processes_with_other_hash_seeds():
    texts = [licence(n) for n in distinct()] + [licence("GPL-2").replace("program", "programme"), "a b c", "a b c"]
    docs = [Document(str(i), t) for i, t in enumerate(texts)]
    here = {"shingles": shingles(texts[0])[:20].tolist(), "clusters": near_duplicate_clusters(texts),
            "split": [list(x) for x in split_documents(docs, eval_fraction=0.3, seed=7)]}
    for hash_seed in ("0", "4242"):
        out = subprocess.run([sys.executable, "-c", _PROBE], input=json.dumps(texts), capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True)
        assert json.loads(out.stdout) == here


def test_labels_computed_once_give_the_same_split_and_report():
    """The pipeline clusters once and hands the labels to both functions: nothing may change."""
    from memreg.train.corpus import Document, split_documents
    from memreg.train.neardup import near_duplicate_clusters, split_report

    base = [p.read_text() for p in sorted(LICENSES.iterdir()) if p.is_file()]
    docs = [Document(str(i), t) for i, t in enumerate(base + [t.replace("the", "a", 3) for t in base[:4]])]
    labels = near_duplicate_clusters([d.text for d in docs])
    for seed in (0, 1, 2):
        plain = split_documents(docs, eval_fraction=0.2, seed=seed)
        given = split_documents(docs, eval_fraction=0.2, seed=seed, labels=labels)
        assert plain == given
        assert split_report(docs, *plain) == split_report(docs, *given, labels=labels)
