"""Issue 11, finding 12: malformed files become one named MemregError naming the file, never a
TypeError, KeyError, AttributeError or RecursionError from deep inside a parser."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memreg.registry import Registry
from memreg.registry.errors import MemregError, SafetensorsError, TokenizerFileError
from memreg.registry.fingerprinting import fingerprint
from memreg.registry.package import safetensors_header

HYPO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write_safetensors(path: Path, header_json: bytes, body: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header_json)) + header_json + body)
    return path


BAD_HEADERS = {
    "tensor is a number (was TypeError)": b'{"w": 5}',
    "no shape (was KeyError: shape)": b'{"w": {"dtype": "F32", "data_offsets": [0, 4]}}',
    "deeply nested (was RecursionError)": b"[" * 100_000 + b"]" * 100_000,
    "header is a list": b"[1, 2]",
    "shape of strings": b'{"w": {"dtype": "F32", "shape": ["a"], "data_offsets": [0, 4]}}',
    "negative dimension": b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
    "offsets past the end": b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 400]}}',
    "dtype not a string": b'{"w": {"dtype": 3, "shape": [1], "data_offsets": [0, 4]}}',
}


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_bad_safetensors_header_is_a_named_error_naming_the_file(tmp_path, header):
    path = _write_safetensors(tmp_path / "model.safetensors", header, b"\0" * 4)
    with pytest.raises(SafetensorsError, match="model.safetensors") as info:
        safetensors_header(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_publish_refuses_a_bad_header_with_a_named_error(tmp_path, package_copy, header):
    _write_safetensors(package_copy / "model.safetensors", header, b"\0" * 4)
    reg = Registry.init(str(tmp_path / "reg"))
    with pytest.raises(SafetensorsError, match="model.safetensors"):
        reg.publish(package_copy, name="law", version="1.0.0")
    assert reg.versions("law") == []


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@HYPO
@given(header=st.dictionaries(st.sampled_from(["w", "b", "__metadata__"]), _json, max_size=3))
def test_any_json_header_parses_or_is_a_safetensors_error(tmp_path, header):
    path = _write_safetensors(tmp_path / "x.safetensors", json.dumps(header).encode(), b"\0" * 64)
    try:
        out = safetensors_header(path)
    except SafetensorsError as e:
        assert "x.safetensors" in str(e)
    else:  # what it returns is safe to count parameters from
        assert all(isinstance(d, int) and d >= 0 for t in out.values() for d in t["shape"])


# --- tokenizer.json --------------------------------------------------------------------------

BAD_TOKENIZERS = {
    "model is a list (was AttributeError)": lambda d: d.update(model=[1, 2]),
    "added token without id (was KeyError: id)": lambda d: d["added_tokens"].append({"content": "<x>"}),
    "vocab of lists": lambda d: d["model"].update(vocab=[[1, 2]]),
    "merge of three": lambda d: d["model"].update(merges=[["a", "b", "c"]]),
    "id not a number": lambda d: d["added_tokens"].append({"id": "seven", "content": "<x>"}),
}


@pytest.mark.parametrize("edit", BAD_TOKENIZERS.values(), ids=BAD_TOKENIZERS.keys())
def test_bad_tokenizer_json_is_a_named_error_naming_the_file(tmp_path, tiny_tokenizer_dir, edit):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer_dir, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    edit(data)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerFileError, match="tokenizer.json") as info:
        fingerprint(folder)
    assert "\n" not in str(info.value)


@HYPO
@given(model=_json, added=_json)
def test_any_tokenizer_json_fingerprints_or_is_a_tokenizer_error(tmp_path, model, added):
    folder = tmp_path / "tok"
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps({"model": model, "added_tokens": added}))
    try:
        fingerprint(folder)
    except MemregError as e:
        assert "tokenizer.json" in str(e) or str(folder) in str(e)


# --- a size mismatch never reports a digest nobody computed ------------------------------------

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_truncated_blob_reports_its_size_not_the_empty_hash(tmp_path, tiny_package):
    from memreg.registry.errors import DigestMismatchError

    reg = Registry.init(str(tmp_path / "reg"))
    m = reg.publish(tiny_package, name="law", version="1.0.0").manifest
    entry = next(e for e in m.model.files if e.path == "model.safetensors")
    blob = tmp_path / "reg" / "blobs" / "sha256" / entry.hex[:2] / entry.hex
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:100])
    with pytest.raises(DigestMismatchError) as info:
        reg.pull("law@1.0.0")
    assert EMPTY_SHA256 not in str(info.value)
    assert f"100 bytes" in str(info.value) and "model.safetensors" in str(info.value)
