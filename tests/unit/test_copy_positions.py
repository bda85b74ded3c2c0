"""bench/quality_stats.copy_positions: the copy / non-copy split every benchmark row is reported on."""

from __future__ import annotations

import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import quality_stats as qs  # noqa: E402

small_ids = st.lists(st.integers(0, 3), min_size=0, max_size=60)  # a tiny alphabet: many repeated 8-grams


def _by_hand(train: list[int], ids: list[int], n: int) -> list[bool]:
    grams = {tuple(train[i:i + n]) for i in range(len(train) - n + 1)}
    return [t >= n - 1 and tuple(ids[t - n + 1:t + 1]) in grams for t in range(1, len(ids))]


@settings(max_examples=300)
@given(small_ids, small_ids.filter(lambda x: len(x) >= 2), st.integers(1, 9))
def test_copy_positions_match_the_definition(train, ids, n):
    got = qs.copy_positions(np.array(train, dtype=np.int64), np.array(ids, dtype=np.int64), n)
    assert got.tolist() == _by_hand(train, ids, n)


def test_copy_split_scores_each_part_on_its_own_positions():
    lp = np.log(np.array([0.5, 0.5, 0.1, 0.1]))
    copy = np.array([True, True, False, False])
    split = qs.copy_split(lp, copy, np.array([0, 0, 1, 1]))
    assert split["copy"]["tokens"] == 2 and abs(split["copy"]["ppl"] - 2.0) < 1e-9
    assert abs(split["noncopy"]["ppl"] - 10.0) < 1e-9
    assert qs.copy_split(lp, np.zeros(4, dtype=bool), np.zeros(4, dtype=np.int64))["copy"]["ppl"] is None


def test_learning_rate_search_extends_past_an_edge_until_the_choice_is_interior():
    """A U-shaped validation curve with its bottom at 3e-5, below a grid of 1e-4 .. 1e-3."""
    import math

    tried = []

    def run_at(lr):
        tried.append(lr)
        return {"lr": lr, "val_ppl": 10 + (math.log10(lr) - math.log10(3e-5)) ** 2}

    best, record = qs.search_lr(run_at, [1e-4, 3e-4, 1e-3])
    assert best["lr"] == 3e-5 and record["interior"] and record["added"] == [3e-5, 1e-5]
    assert sorted(tried) == [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
    best, record = qs.search_lr(run_at, [1e-3])  # one rate: stated, not searched
    assert record == {"grid": {"0.001": round(run_at(1e-3)["val_ppl"], 4)}, "chosen": 1e-3, "added": [], "interior": False}
    assert [qs.next_rate(x, up=True) for x in (1e-4, 3e-4, 1e-3)] == [3e-4, 1e-3, 3e-3]
    assert [qs.next_rate(x, up=False) for x in (1e-4, 3e-4, 1e-3)] == [3e-5, 1e-4, 3e-4]
