"""Issue 23, item 7: `memreg train` and `memreg eval` read a file through corpus.read_text_file, which
read the whole file before looking for a NUL byte in its first 8 KiB (a 1.5 GB sparse file cost 2.0 GB
of memory before being skipped as binary; a 6 GB one was a MemoryError). Now the first 8 KiB decide
"binary" alone, and a text file past the per-file bound is refused with one line saying what to do.

The files are sparse (`truncate`): gigabytes long, no disk used. Memory is measured as the growth of
the peak RSS (ru_maxrss) of a fresh interpreter around the call, under an address-space limit so that
a regression fails with a MemoryError instead of eating the shared machine's memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from licences import licence_files
from memreg.train.corpus import MAX_TEXT_FILE_BYTES, TextFileTooLargeError, read_text_file
from memreg.train.errors import CorpusError

SPARSE = 3 << 30  # 3 GiB, above the bound, never on disk
SMALL_MIB = 64  # the most a read that skips or refuses may add to the peak RSS

# Runs `call` on the file in a fresh interpreter, its address space capped at what it holds plus 1 GiB,
# and prints {"result": ..., "grew_mib": peak RSS growth}.
_PROBE = r"""
import json, resource, sys
from pathlib import Path
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
from memreg.train.corpus import CorpusReport, iter_documents, read_text_file
from memreg.cli.attach import _read_texts
call, path = sys.argv[1], Path(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    if call == "read_text_file":
        text, why = read_text_file(path)
        result = why
    elif call == "train":
        report = CorpusReport()
        docs = list(iter_documents([str(path.parent)], report))
        result = [len(docs), report.skipped]
    else:
        result = len(_read_texts([path.parent]))
except Exception as e:
    result = f"{type(e).__name__}: {e}"
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"result": result, "grew_mib": grew}))
"""


def _probe(call: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, call, str(path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sparse(path: Path, head: bytes, size: int = SPARSE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)  # the rest reads as NUL bytes and takes no disk
    return path


@pytest.fixture
def licence_text() -> bytes:
    return licence_files(["GPL-3"])[0].read_bytes()  # 35 KiB of real text: no NUL in the first 8 KiB


def test_a_sparse_binary_file_is_skipped_in_small_memory(tmp_path):
    path = _sparse(tmp_path / "corpus" / "disk.img", b"\x7fELF\x02\x01\x01\x00")
    got = _probe("read_text_file", path)
    assert got["result"] == "binary"
    assert got["grew_mib"] < SMALL_MIB, got


def test_train_skips_a_sparse_binary_file_and_keeps_the_text(tmp_path, licence_text):
    path = _sparse(tmp_path / "corpus" / "disk.img", b"\x00" * 16)
    (path.parent / "GPL-3").write_bytes(licence_text)
    got = _probe("train", path)
    assert got["result"][0] == 1 and got["result"][1] == [f"{path} (binary)"]
    assert got["grew_mib"] < SMALL_MIB, got


def test_eval_skips_a_sparse_binary_file_in_small_memory(tmp_path, licence_text):
    path = _sparse(tmp_path / "eval" / "disk.img", b"\x00" * 16)
    (path.parent / "GPL-3").write_bytes(licence_text)
    got = _probe("eval", path)
    assert got["result"] == 1  # the one text file
    assert got["grew_mib"] < SMALL_MIB, got


def test_text_past_the_bound_is_refused_naming_file_and_bound(tmp_path, licence_text):
    """No NUL in the first 8 KiB (the binary check passes), 3 GiB long: refused before it is read."""
    path = _sparse(tmp_path / "corpus" / "huge.txt", licence_text)
    got = _probe("read_text_file", path)
    assert got["result"].startswith("TextFileTooLargeError: "), got
    assert str(path) in got["result"] and f"{MAX_TEXT_FILE_BYTES >> 20} MiB" in got["result"]
    assert "split" in got["result"] and "\n" not in got["result"]
    assert got["grew_mib"] < SMALL_MIB, got


def test_the_bound_is_a_parameter_and_the_error_a_corpus_error(tmp_path, licence_text):
    path = tmp_path / "GPL-3"
    path.write_bytes(licence_text)
    assert read_text_file(path, max_bytes=len(licence_text))[0] == licence_text.decode()
    with pytest.raises(TextFileTooLargeError, match=r"GPL-3 is 0\.03 MiB, over the 0\.03 MiB") as info:
        read_text_file(path, max_bytes=len(licence_text) - 1)
    assert isinstance(info.value, CorpusError) and isinstance(info.value, ValueError)


def test_the_eight_kib_sniff_still_decides_binary(tmp_path, licence_text):
    """A NUL just inside the first 8 KiB is binary; one just past it is text (as before)."""
    inside, past = tmp_path / "inside", tmp_path / "past"
    inside.write_bytes(licence_text[:8191] + b"\x00" + licence_text[8192:])
    past.write_bytes(licence_text[:8192] + b"\x00" + licence_text[8193:])
    assert read_text_file(inside) == (None, "binary")
    assert read_text_file(past)[1] is None
