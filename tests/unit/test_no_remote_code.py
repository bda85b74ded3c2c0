"""Issue 23, item 9: memreg never runs a model repository's code. Every `from_pretrained` call in the
code users run (sdk/, cli/, registry/) says `trust_remote_code=False` explicitly, so that no default of
transformers, peft or a wrapper, now or in a later release, decides it. An AST walk, so that a call
split over lines, or one reached through an alias (`auto_config.from_pretrained`), is seen too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

FOLDERS = ("sdk", "cli", "registry")


def _says_false(call: ast.Call) -> bool:
    return any(k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is False
               for k in call.keywords)


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """`file:line` of every `<x>.from_pretrained(...)` call without an explicit trust_remote_code=False."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained" and not _says_false(node)):
            found.append(f"{filename}:{node.lineno}")
    return found


def test_every_from_pretrained_in_memreg_says_trust_remote_code_false():
    files = sorted(p for folder in FOLDERS for p in (REPO / folder).rglob("*.py"))
    assert len(files) > 30  # the walk found the code
    calls = [c for p in files for c in unsafe_calls(p.read_text(), str(p.relative_to(REPO)))]
    assert calls == [], "from_pretrained without trust_remote_code=False: " + ", ".join(calls)


def test_the_memreg_code_has_from_pretrained_calls_to_check():
    """Guards the walk itself: the calls it must see are there (models.py loads every model)."""
    source = (REPO / "sdk" / "models.py").read_text()
    assert "from_pretrained(" in source and unsafe_calls(source) == []


@pytest.mark.parametrize("source, bad", [
    ("AutoTokenizer.from_pretrained(ref)", True),
    ("AutoModel.from_pretrained(\n    ref,\n    dtype=d,\n)", True),
    ("cfg.from_pretrained(ref, trust_remote_code=True)", True),
    ("cfg.from_pretrained(ref, trust_remote_code=flag)", True),  # a variable: not visibly False
    ("cfg.from_pretrained(ref, **{'trust_remote_code': False})", True),
    ("AutoTokenizer.from_pretrained(ref, trust_remote_code=False)", False),
    ("x = from_pretrained_folder(ref)", False),  # another name: not a from_pretrained call
])
def test_the_walk_flags_what_it_should(source, bad):
    assert bool(unsafe_calls(source)) is bad
