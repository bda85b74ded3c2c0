"""Errors of the training pipeline, re-exported from their one home, `memreg.core.errors` (kept so
that `from memreg.train.errors import …` keeps working). Each names what is wrong and what to do next."""

from __future__ import annotations

from memreg.core.errors import (
    CorpusError,
    CorpusTooSmallError,
    EmptyCorpusError,
    InvalidTrainSettingError,
    MemregError,
    TextFileTooLargeError,
    TokenizerMismatchError,
    UnsupportedArchitectureError,
    WorkDirMismatchError,
)

__all__ = [
    "CorpusError",
    "CorpusTooSmallError",
    "EmptyCorpusError",
    "InvalidTrainSettingError",
    "MemregError",
    "TextFileTooLargeError",
    "TokenizerMismatchError",
    "UnsupportedArchitectureError",
    "WorkDirMismatchError",
]
