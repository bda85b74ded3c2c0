"""`list` without --all validates only the entry it prints (registry/index.py, _latest_state): over
any index it must print what parsing the whole index would, and hand every index it cannot read
that way (pending entries, damage in the printed entry, another package's index) to the full parse."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from memreg.registry.index import _latest_state, _state
from memreg.schemas import IndexedVersion, NameIndex, TokenizerFingerprint, VersionSummary

FP = TokenizerFingerprint(digest="sha256:" + "ab" * 32, vocab_size=10, model_type="BPE")
VERSIONS = st.builds(lambda a, b, c, pre: f"{a}.{b}.{c}" + (f"-{pre}" if pre else ""),
                     st.integers(0, 12), st.integers(0, 12), st.integers(0, 12),
                     st.sampled_from([None, "rc.1", "rc.2", "alpha", "1"]))


def _summary(name: str, version: str) -> VersionSummary:
    return VersionSummary(name=name, version=version, description=f"d{version}", tokenizer=FP.digest,
                          created_at=datetime(2026, 1, 1, tzinfo=timezone.utc), parameter_count=1, size=2)


@st.composite
def indexes(draw) -> NameIndex:
    versions = draw(st.lists(VERSIONS, max_size=12, unique=True))
    yanked = draw(st.lists(st.sampled_from(versions), unique=True)) if versions else []
    tags = {f"t{i}": v for i, v in enumerate(draw(st.lists(st.sampled_from(versions), max_size=3)))} if versions else {}
    entries = {v: IndexedVersion(summary=_summary("law", v)) for v in versions}
    return NameIndex(name="law", versions=entries, yanked=yanked, tags=tags, fingerprints={FP.digest: FP})


@settings(max_examples=200, deadline=None)
@given(indexes())
def test_the_printed_version_is_the_one_a_full_parse_prints(index):
    quick = _latest_state("law", index.model_dump_json().encode())
    full = _state(index)
    assert quick is not None
    assert quick.versions(include_yanked=False) == full.versions(include_yanked=False)[-1:]
    for v in quick.versions():
        assert quick.summaries[v] == full.summaries[v]
        assert quick.fingerprints[quick.summaries[v].tokenizer] == FP
    assert (quick.yanked, quick.tags) == (full.yanked, full.tags)


def _with_entry(index: NameIndex, version: str, entry: dict) -> bytes:
    doc = index.model_dump(mode="json")
    doc["versions"][version] = entry
    return json.dumps(doc).encode()


def test_what_it_cannot_read_goes_to_the_full_parse():
    index = NameIndex(name="law", versions={v: IndexedVersion(summary=_summary("law", v)) for v in ("1.0.0", "1.1.0")},
                      fingerprints={FP.digest: FP})
    good = index.model_dump(mode="json")["versions"]["1.1.0"]
    damaged_summary = {"summary": {**good["summary"], "parameter_count": "many"}}
    assert _latest_state("law", None) is None  # missing: rebuilt
    assert _latest_state("code", index.model_dump_json().encode()) is None  # another package's index
    assert _latest_state("law", b"{not json") is None
    assert _latest_state("law", _with_entry(index, "2.0.0", {"pending_since": "2026-01-01T00:00:00Z"})) is None
    assert _latest_state("law", _with_entry(index, "1.1.0", damaged_summary)) is None  # the printed entry
    assert _latest_state("law", _with_entry(index, "1.1.0", {"summary": None, "token": 3})) is None
    lost_fp = index.model_copy(update={"fingerprints": {}}).model_dump_json().encode()
    assert _latest_state("law", lost_fp) is None
    # damage below the printed entry is not looked at: list still prints 1.1.0 (list --all meets it)
    below = _latest_state("law", _with_entry(index, "1.0.0", damaged_summary))
    assert below is not None and below.versions() == ["1.1.0"]
