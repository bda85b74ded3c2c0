"""Every benchmark and example script still imports against the SDK as it is now.

A script is imported as `python bench/x.py` would run it (its own folder first on sys.path), with
importlib and without running its main. Imports that sit inside functions (a script's lazy
`from memreg.compose import ...`, `from overlap import ...`) run only when that code path does, so
they are read from the source (ast) and resolved too: each `memreg.*` or sibling-script module is
imported and each imported name looked up. A move or rename in the SDK then fails here, naming
the script and the import, instead of in a benchmark run.

Each folder is checked in one fresh interpreter, so nothing the test process imported hides a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FOLDERS = ("bench", "examples")

# Runs in the child: argv[1] is the folder; prints {script: [failure, ...]} as JSON on the last line.
CHECK = r"""
import ast, importlib, importlib.util, json, sys, traceback
from pathlib import Path

folder = Path(sys.argv[1])
sys.path.insert(0, str(folder))
scripts = sorted(folder.glob("*.py"))
siblings = {p.stem for p in scripts}
failures = {}


def one_line(exc):
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def wanted(module):
    return module == "memreg" or module.startswith("memreg.") or module.split(".")[0] in siblings


for path in scripts:
    bad = []
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit too: a script that exits on import is broken as a module
        bad.append(f"import: {one_line(exc)}")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and wanted(node.module):
            try:
                target = importlib.import_module(node.module)
            except Exception as exc:
                bad.append(f"line {node.lineno}: from {node.module} import ...: {one_line(exc)}")
                continue
            for alias in node.names:
                if alias.name != "*" and not hasattr(target, alias.name):
                    try:  # a submodule not imported yet
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except Exception:
                        bad.append(f"line {node.lineno}: {node.module} has no {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if wanted(alias.name):
                    try:
                        importlib.import_module(alias.name)
                    except Exception as exc:
                        bad.append(f"line {node.lineno}: import {alias.name}: {one_line(exc)}")
    if bad:
        failures[path.name] = bad
print(json.dumps({"scripts": [p.name for p in scripts], "failures": failures}))
"""


@pytest.mark.slow  # imports every bench script in a fresh interpreter (torch and transformers among them)
@pytest.mark.parametrize("folder", FOLDERS)
def test_scripts_import(folder: str) -> None:
    where = Path(REPO) / folder
    proc = subprocess.run([sys.executable, "-c", CHECK, str(where)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report["scripts"]) == len(list(where.glob("*.py"))) > 0
    assert report["failures"] == {}, "\n".join(f"{folder}/{name}: {why}" for name, bad in report["failures"].items()
                                               for why in bad)
