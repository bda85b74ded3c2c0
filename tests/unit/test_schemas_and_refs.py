"""Registry format v1: the JSON Schema files match the models, refs follow the naming rules."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from memreg.registry.errors import InvalidReferenceError
from memreg.registry.refs import parse_ref, version_key
from memreg.schemas import FileEntry, Manifest, NameIndex, PackageCard, TagPointer, YankRecord
from memreg.schemas.generate import main as generate_main
from memreg.schemas.generate import render
from memreg.schemas.v1 import NAME_PATTERN, SEMVER_PATTERN


def test_json_schema_files_are_current():
    assert generate_main(["--check"]) == 0, "run: python -m memreg.schemas.generate"


def test_schema_check_detects_drift(tmp_path, monkeypatch):
    import memreg.schemas.generate as gen

    for name, text in render().items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(gen, "OUT", tmp_path)
    assert gen.main(["--check"]) == 0
    (tmp_path / "manifest.schema.json").write_text("{}")
    assert gen.main(["--check"]) == 1


def test_unknown_format_version_names_the_one_we_read():
    with pytest.raises(ValidationError, match="format_version 2 is not supported: this memreg reads format 1"):
        PackageCard.model_validate({"format_version": 2})
    # NameIndex checks it on the field (a model validator slowed `list`): same message, first error
    with pytest.raises(ValidationError, match="format_version 2 is not supported: this memreg reads format 1") as info:
        NameIndex.model_validate_json(b'{"format_version": 2, "name": "law"}')
    assert info.value.errors()[0]["loc"] == ("format_version",)


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\b", ""])
def test_file_entries_cannot_escape_the_package(path):
    with pytest.raises(ValidationError, match="escapes the package folder|file path"):
        FileEntry(path=path, digest="sha256:" + "0" * 64, size=1)


def test_manifest_round_trip(tiny_package):
    from memreg.registry.fingerprinting import fingerprint
    from memreg.registry.fsutil import file_digest
    from memreg.registry.package import model_info, scan_folder

    files = scan_folder(tiny_package)
    entries = [FileEntry(path=f.path, digest=file_digest(f.local), size=f.size) for f in files]
    m = Manifest(name="law", version="1.0.0", created_at=datetime.now(timezone.utc), memreg_version="0.1.0",
                 tokenizer=fingerprint(tiny_package), model=model_info(tiny_package, entries))
    assert Manifest.model_validate_json(m.model_dump_json()) == m
    assert m.model.parameter_count == sum(p for p in [m.model.parameter_count]) > 0


names = st.from_regex(NAME_PATTERN, fullmatch=True)
versions = st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999)).map(lambda t: "%d.%d.%d" % t)


@given(names, versions)
def test_valid_refs_parse(name, version):
    assert parse_ref(f"{name}@{version}").version == version
    assert parse_ref(name).name == name
    assert parse_ref(f"{name}:{name}").tag == name


@given(st.text(min_size=1, max_size=70))
def test_invalid_names_are_refused_with_the_rule(text):
    if re.fullmatch(NAME_PATTERN, text) or any(c in text for c in "@:"):
        return
    with pytest.raises(InvalidReferenceError, match="is not a valid name: names are 1-64 characters"):
        parse_ref(text)


@settings(max_examples=200)
@given(st.lists(versions, min_size=2, max_size=6, unique=True))
def test_version_order_is_numeric(vs):
    ordered = sorted(vs, key=version_key)
    assert ordered == sorted(vs, key=lambda v: tuple(int(x) for x in v.split(".")))


def test_prerelease_sorts_before_release():
    assert sorted(["1.0.0", "1.0.0-rc.2", "1.0.0-rc.10", "1.0.0-alpha"], key=version_key) == \
        ["1.0.0-alpha", "1.0.0-rc.2", "1.0.0-rc.10", "1.0.0"]


# Issue 23 item 6: versions, names and tags are ASCII. `\d` and int() accept every Unicode digit, so
# 1.0.9\u0669 ranked as 1.0.99 (and became what `law` resolves to) and 1.0.1\uff10 passed for 1.0.10.
NON_ASCII_DIGITS = [c for c in map(chr, range(0x80, 0x110000)) if c.isdigit() or c.isdecimal()]
RULES = ("use MAJOR.MINOR.PATCH of ASCII digits 0-9", "names are 1-64 characters of a-z, 0-9")


class NoIO:
    """A store that fails the test on any use: what is refused must be refused before any I/O."""

    url = "memory://no-io"

    def __getattr__(self, name):
        raise AssertionError(f"store.{name} was used for a reference that should have been refused first")


@st.composite
def refs_with_a_foreign_digit(draw):
    name, version = draw(names), draw(versions)
    ref = draw(st.sampled_from([f"{name}@{version}", f"{name}:{name}", name]))
    i = draw(st.integers(0, len(ref)))
    digit = draw(st.sampled_from(NON_ASCII_DIGITS))
    return ref[:i] + digit + ref[i + draw(st.integers(0, 1)):]  # inserted, or in place of a character


@pytest.mark.slow  # a property test of 500 examples
@settings(max_examples=500, deadline=None)
@given(refs_with_a_foreign_digit())
def test_a_non_ascii_digit_anywhere_is_refused_before_io_with_the_rule(ref):
    from memreg.registry import Registry

    with pytest.raises(InvalidReferenceError) as info:
        Registry(NoIO()).resolve(ref)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and any(rule in message for rule in RULES), message
    assert "is not ASCII" in message, message


@pytest.mark.parametrize("version", ["1.0.9\u0669", "1.0.1\uff10", "\u0661.0.0", "1.0.0-rc.\u0662", "1.0.0-\u00b2"])
def test_look_alike_versions_have_no_rank_and_no_document(version):
    with pytest.raises(InvalidReferenceError):
        version_key(version)
    stamp = {"updated_at": "2026-01-01T00:00:00Z", "yanked_at": "2026-01-01T00:00:00Z"}
    for model, doc in ((TagPointer, {"name": "law", "tag": "stable", "version": version}),
                       (YankRecord, {"name": "law", "version": version})):
        with pytest.raises(ValidationError, match="version"):
            model.model_validate_json(json.dumps({**doc, **{k: v for k, v in stamp.items() if k in model.model_fields}}))
    assert not re.fullmatch(SEMVER_PATTERN, version) and "\\d" not in SEMVER_PATTERN


@pytest.mark.parametrize("size", ["\u0661\u0660", "1\uff10", "\u00b2"])
def test_sizes_in_documents_are_ascii_numbers(size):
    """pydantic's lax mode reads a JSON string "10" as 10; a string of non-ASCII digits never."""
    digest = "sha256:" + "0" * 64
    with pytest.raises(ValidationError, match="size"):
        FileEntry.model_validate_json(json.dumps({"path": "a", "digest": digest, "size": size}))
    assert FileEntry.model_validate_json(json.dumps({"path": "a", "digest": digest, "size": "10"})).size == 10
