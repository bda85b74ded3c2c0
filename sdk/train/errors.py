"""Errors of the training pipeline. Each names what is wrong and what to do next (one line)."""

from __future__ import annotations

from memreg.registry.errors import MemregError, TokenizerMismatchError

__all__ = [
    "CorpusError",
    "CorpusTooSmallError",
    "EmptyCorpusError",
    "InvalidTrainSettingError",
    "MemregError",
    "TokenizerMismatchError",
    "UnsupportedArchitectureError",
    "WorkDirMismatchError",
]


class CorpusError(MemregError, ValueError):
    """The corpus cannot be read or used as it is."""


class EmptyCorpusError(CorpusError):
    """No usable text at all (no files matched, or every file was skipped or empty)."""


class CorpusTooSmallError(CorpusError):
    """Fewer training tokens than one block."""


class InvalidTrainSettingError(MemregError, ValueError):
    """A setting outside what the data allows (e.g. --k larger than the datastore)."""


class UnsupportedArchitectureError(MemregError, ValueError):
    """A model whose last block's MLP memreg cannot find."""


class WorkDirMismatchError(MemregError, FileExistsError):
    """The work folder holds a run of another corpus or other settings; it is never silently reused."""
