"""The layout decides what a key under packages/ is, for every valid package name (gc relies on it)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memreg.registry.layout import manifest_key, parse_package_key, tag_key, yank_key

names = st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,63}\Z")
versions = st.builds(lambda a, b, c: f"{a}.{b}.{c}", *[st.integers(0, 10**6)] * 3)
tag_names = st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,20}\Z")


@given(names, versions, tag_names)
def test_every_document_key_parses_back_to_its_kind(name, version, tag):
    for key, kind, stem in [(manifest_key(name, version), "manifest", version), (tag_key(name, tag), "tag", tag), (yank_key(name, version), "yank", version)]:
        parsed = parse_package_key(key)
        assert (parsed.kind, parsed.name, parsed.stem) == (kind, name, stem)


def test_keys_outside_the_layout_are_no_document():
    for key in ["packages/law/README.md", "packages/law/extra/1.0.0.json", "index/law.json",
                "packages/law/tags/x/y.json", "packages//1.0.0.json", "blobs/sha256/ab/abc"]:
        assert parse_package_key(key) is None, key
