"""Real text that ships with every Debian machine: the licences of the system's own software. The
tests train their tokenizers on it and hold parts of it out as evaluation text, so nothing is
downloaded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

LICENSES = Path("/usr/share/common-licenses")


def licence_files(names: Sequence[str] | None = None) -> list[Path]:
    """The named licence files this machine has, in the order named; with no names, every licence
    file except the links (GPL -> GPL-3 and the like would count a text twice), sorted."""
    if names is None:
        return sorted(p for p in LICENSES.iterdir() if p.is_file() and not p.is_symlink())
    return [p for p in (LICENSES / n for n in names) if p.is_file()]


def licence_texts(names: Sequence[str] | None = None) -> list[str]:
    """The text of `licence_files(names)`."""
    return [p.read_text(errors="replace") for p in licence_files(names)]
