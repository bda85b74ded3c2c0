"""Issue 23, item 9: a malformed GGUF header is one named error, GGUFFormatError (a GGUFError, so a
MemregError and a ValueError), with one line naming the file, never a ValueError, OSError,
RecursionError, IndexError or struct.error from a parser. Checked over truncations and byte
mutations of the header of the tiny GGUF test_gguf writes, and on crafted headers."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("gguf")
pytest.importorskip("transformers")

from memreg import gguf as mg  # noqa: E402
from memreg.registry.errors import MemregError  # noqa: E402

from test_gguf import write_tiny_gguf  # noqa: E402
from train_helpers import single_thread_fixture  # noqa: E402

_threads = single_thread_fixture()
HYPO = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[bytes, int]:
    """The file's bytes and where its tensor data begins (the header is everything before)."""
    import gguf

    path = tmp_path_factory.mktemp("gguf-fuzz") / "tiny.gguf"
    write_tiny_gguf(path)
    return path.read_bytes(), gguf.GGUFReader(str(path)).data_offset


def _mutated(data: bytes, header: int, draw) -> bytes:
    """A truncation inside the header, or a few bytes of the header overwritten."""
    if draw(st.booleans()):
        return data[: draw(st.integers(0, header - 1))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        out[draw(st.integers(4, header - 1))] = draw(st.integers(0, 255))  # past the magic: a GGUF still
    return bytes(out)


def _assert_named(exc: BaseException, path: Path) -> None:
    assert isinstance(exc, mg.GGUFFormatError) or type(exc) is mg.GGUFError, repr(exc)
    assert isinstance(exc, MemregError) and isinstance(exc, ValueError)
    assert str(path) in str(exc) and "\n" not in str(exc)


@pytest.mark.slow  # a property test over mutated headers
@settings(max_examples=400, **HYPO)
@given(data=st.data())
def test_reading_a_mutated_header_gives_metadata_or_one_named_error(tiny, tmp_path, data):
    raw, header = tiny
    path = tmp_path / "m.gguf"
    path.write_bytes(_mutated(raw, header, data.draw))
    for read in (mg.read_metadata, mg.read_header):
        try:
            read(path)
        except Exception as exc:  # noqa: BLE001 - the point: which class it is
            _assert_named(exc, path)  # cut inside the magic: "not a GGUF file" (GGUFError); else GGUFFormatError
            assert isinstance(exc, mg.GGUFFormatError) or path.stat().st_size < 4, repr(exc)


@settings(max_examples=25, **HYPO)
@given(data=st.data())
def test_converting_a_mutated_header_converts_or_raises_one_named_error(tiny, tmp_path_factory, data):
    """Through transformers' own GGUF reader too: whatever the header check lets pass."""
    raw, header = tiny
    root = tmp_path_factory.mktemp("conv")
    path = root / "m.gguf"
    path.write_bytes(_mutated(raw, header, data.draw))
    try:
        mg.convert_gguf(path, root / "out")
    except Exception as exc:  # noqa: BLE001
        _assert_named(exc, path)
        assert not (root / "out").exists()


def _header(*kvs: bytes, n_tensors: int = 0, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kvs)) + b"".join(kvs)


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


CRAFTED = {
    # arrays of arrays of arrays…: a recursive skip ran out of stack
    "nested arrays (was RecursionError)": _header(_s("x") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 100_000),
    # a string length that sends the file position past what an offset can hold
    "string skip past 2**63 (was ValueError)": _header(_s("x") + struct.pack("<IQ", 8, 2**64 - 1)),
    # an array of u64 whose byte size overflows the seek
    "array skip past 2**63 (was OSError/ValueError)": _header(_s("x") + struct.pack("<IIQ", 9, 10, 2**62)),
    "unknown value type (was KeyError)": _header(_s("x") + struct.pack("<I", 77)),
    "key not UTF-8": _header(struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<IB", 0, 1)),
    "kv count past the file": _header(_s("general.name") + struct.pack("<I", 8) + _s("tiny")) [:-4],
    "tensor with 9 dimensions": _header(_s("general.architecture") + struct.pack("<I", 8) + _s("llama"),
                                        n_tensors=1) + _s("w") + struct.pack("<I", 9) + struct.pack("<Q", 1) * 9
    + struct.pack("<IQ", 0, 0),
    "tensor data past the end": _header(_s("general.architecture") + struct.pack("<I", 8) + _s("llama"),
                                        n_tensors=1) + _s("w") + struct.pack("<IQIQ", 1, 1 << 20, 0, 0),
    "unknown tensor type": _header(_s("general.architecture") + struct.pack("<I", 8) + _s("llama"),
                                   n_tensors=1) + _s("w") + struct.pack("<IQIQ", 1, 4, 999, 0),
}


@pytest.mark.parametrize("raw", CRAFTED.values(), ids=CRAFTED.keys())
def test_crafted_bad_headers_are_one_named_error(tmp_path, raw):
    path = tmp_path / "bad.gguf"
    path.write_bytes(raw)
    with pytest.raises(mg.GGUFFormatError) as info:
        mg.read_header(path)
        mg.convert_gguf(path, tmp_path / "out")  # a header the walk passes must still fail as one error
    _assert_named(info.value, path)


def test_the_whole_header_of_a_good_file_reads(tiny, tmp_path):
    raw, header = tiny
    path = tmp_path / "ok.gguf"
    path.write_bytes(raw)
    h = mg.read_header(path)
    assert h.metadata["general.architecture"] == "llama" and h.data_start == header
    assert len(h.tensors) == 1 + 2 * 9 + 2  # embedding, 9 per block, final norm, output
    assert all(t.offset + t.nbytes <= len(raw) - header for t in h.tensors)


def test_a_renamed_tensor_is_refused_not_randomly_initialised(tiny, tmp_path):
    """Found by the fuzzing above: a tensor whose name no longer maps to the model (one byte changed)
    left its weight to transformers' random init, and the conversion succeeded."""
    raw, header = tiny
    path = tmp_path / "renamed.gguf"
    assert raw[:header].count(b"blk.1.attn_norm.weight") == 1
    path.write_bytes(raw.replace(b"blk.1.attn_norm.weight", b"blk.1.attn_nozm.weight"))
    mg.read_header(path)  # a well-formed header: what it names is the problem
    with pytest.raises(mg.GGUFFormatError, match=r"1 missing \(model\.layers\.1\.input_layernorm\.weight\).*random init"):
        mg.convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _set_u32(data: bytes, key: str, value: int) -> bytes:
    """The u32 metadata value of `key` overwritten in place (its type tag sits between key and value)."""
    out = bytearray(data)
    at = out.index(key.encode()) + len(key) + 4
    struct.pack_into("<I", out, at, value)
    return bytes(out)


# Sizes transformers builds a model from before it reads a tensor: one corrupt byte used to build a
# model of 2**28 blocks (no end, then out of memory) or one of 3 * 10**11 parameters.
HUGE = {
    "block count 2**28 + 2": ("llama.block_count", 2**28 + 2, "blocks"),
    "block count 127": ("llama.block_count", 127, "blocks"),
    "hidden size 2**24 + 32": ("llama.embedding_length", 2**24 + 32, "parameters"),
    "feed-forward width 2**28": ("llama.feed_forward_length", 2**28, "parameters"),
    "vocabulary 2**30": ("llama.vocab_size", 2**30, "parameters"),
    "heads that do not divide the width": ("llama.attention.head_count", 127, "refuses"),
    "pad id past the vocabulary": ("tokenizer.ggml.padding_token_id", 2**16, "refuses"),
}


@pytest.mark.parametrize("key, value, says", HUGE.values(), ids=HUGE.keys())
def test_sizes_the_tensors_cannot_fill_are_refused_before_the_model_is_built(tiny, tmp_path, key, value, says):
    raw, _ = tiny
    path = tmp_path / "huge.gguf"
    path.write_bytes(_set_u32(raw, key, value))
    with pytest.raises(mg.GGUFFormatError) as info:
        mg.convert_gguf(path, tmp_path / "out")
    _assert_named(info.value, path)
    assert says in str(info.value)
    assert not (tmp_path / "out").exists()
