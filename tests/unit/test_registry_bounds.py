"""Issue 11, findings 4, 8, 9 and 11: what a manifest may list and how long names may be,
checked over large input spaces."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memreg.registry.errors import InvalidReferenceError, PackageError
from memreg.registry.package import MAX_PATH_LENGTH, files_problem, path_problem, scan_folder
from memreg.registry.refs import MAX_VERSION_LENGTH, check_version
from memreg.schemas.v1 import SEMVER_PATTERN

PARTS = st.sampled_from(["a", "A", "b", "memreg.json", "MEMREG.JSON", "x.py", "w.bin", ".git", "c.json", "d"])
PATHS = st.lists(PARTS, min_size=1, max_size=3).map("/".join)


@given(st.lists(PATHS, min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_paths_a_manifest_may_list_assemble_without_collisions(paths):
    """Whatever passes files_problem can be created file by file with exclusive creates (never
    through an existing file: a hard link into a cached blob), then the card beside them."""
    if files_problem(paths) is not None:
        return
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for p in paths:
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            with open(root / p, "x"):
                pass
        with open(root / "memreg.json", "x"):
            pass
        assert not any(Path(p).suffix in {".py", ".bin"} for p in paths)


@given(st.text(alphabet="0123456789.-abcXYZ+", max_size=300))
@settings(max_examples=500, deadline=None)
def test_a_version_is_refused_or_short_and_semantic(text):
    try:
        v = check_version(text)
    except InvalidReferenceError as e:
        assert len(str(e).splitlines()) == 1
        return
    assert len(v) <= MAX_VERSION_LENGTH and re.fullmatch(SEMVER_PATTERN, v)


def test_an_overlong_version_error_says_the_limit():
    with pytest.raises(InvalidReferenceError, match=f"at most {MAX_VERSION_LENGTH}"):
        check_version("1.0.0-" + "a" * 242, name="law")


def test_overlong_paths_are_refused_at_publish(tmp_path, tiny_package):
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    deep = pkg / "/".join(["d" * 100] * 6)
    deep.mkdir(parents=True)
    (deep / "notes.txt").write_text("x")
    assert path_problem(deep.relative_to(pkg).as_posix() + "/notes.txt")
    with pytest.raises(PackageError, match=f"at most {MAX_PATH_LENGTH}"):
        scan_folder(pkg)
