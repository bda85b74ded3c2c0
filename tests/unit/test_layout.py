"""The layout decides what a key under packages/ is, for every valid package name (gc relies on it)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memreg.registry.layout import (
    CATALOG_KEY,
    MARKER,
    MODELS,
    blob_key_of,
    document_kind,
    index_key,
    lease_key,
    manifest_key,
    parse_package_key,
    signature_key,
    stem,
    tag_key,
    yank_key,
)

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


@given(names, versions, tag_names, st.from_regex(r"\A[0-9a-f]{64}\Z"))
def test_every_key_the_layout_builds_is_a_document_of_its_kind(name, version, tag, digest):
    """document_kind inverts every key builder (the golden test and gc name documents by it)."""
    built = {manifest_key(name, version): "manifest", tag_key(name, tag): "tag", yank_key(name, version): "yank",
             signature_key(name, version, digest): "signature", index_key(name): "index",
             lease_key(digest[:32]): "lease", CATALOG_KEY: "catalog", MARKER: "marker"}
    for key, kind in built.items():
        assert document_kind(key) == kind, key
        assert kind in MODELS
    assert document_kind(blob_key_of(digest)) is None  # a blob is bytes, not a document
    assert stem(signature_key(name, version, digest)) == digest


def test_no_other_module_builds_registry_keys():
    """Every key is built in registry/layout.py: no other module of the registry, the SDK or the CLI
    spells a top-level folder of a registry inside a string."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    spelled = re.compile(r"""f?["'](blobs|packages|index|leases)/""")
    found = [f"{p.relative_to(repo)}:{n}" for top in ("registry", "sdk", "cli") for p in sorted((repo / top).rglob("*.py"))
             if p.name != "layout.py" for n, line in enumerate(p.read_text().splitlines(), 1)
             if spelled.search(line) and "<" not in line]  # "packages/<name>/…" in a message is prose
    assert found == []
