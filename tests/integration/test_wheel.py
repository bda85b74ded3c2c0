"""The wheel holds every module (package-dir mappings are easy to get wrong) and each imports."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # builds the wheel with pip and imports it in a fresh environment

FOLDERS = {"sdk": "memreg", "registry": "memreg/registry", "cli": "memreg/cli", "schemas": "memreg/schemas",
           "core": "memreg/core"}


def test_wheel_contains_and_imports_every_module(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("memreg-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{FOLDERS[p.relative_to(REPO).parts[0]]}/{p.relative_to(REPO / p.relative_to(REPO).parts[0]).as_posix()}"
                for folder in FOLDERS for p in (REPO / folder).rglob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert "memreg/schemas/json/manifest.schema.json" in names and "memreg/py.typed" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in names
                     if n.endswith(".py") and n.startswith("memreg/") and not n.endswith("__main__.py"))
    script = ("import importlib, sys, memreg\n"
              f"assert memreg.__file__.startswith({str(site)!r}), memreg.__file__\n"
              f"for m in {modules!r}: importlib.import_module(m)\n"
              "print('imported', len(sys.modules))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (Path(site) / "memreg" / "cli" / "main.py").is_file()
