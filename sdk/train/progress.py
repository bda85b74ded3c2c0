"""How the pipeline reports progress: a callback object whose default does nothing.

The SDK never draws anything; `memreg train` (cli/) turns these calls into rich bars, and tests
can record them (or raise from them to simulate a crash at a precise point).
"""

from __future__ import annotations

from typing import Any


class TrainProgress:
    def stage(self, name: str, *, total: int | None, unit: str, cached: bool = False) -> None:
        """A stage starts (`cached`: its result was found in the work folder)."""

    def advance(self, n: int = 1, **info: Any) -> None:
        """`n` more units of the current stage are done; `info` holds e.g. the loss."""

    def note(self, message: str, *, warning: bool = False) -> None:
        """A one-line choice the user should know about (k lowered, temperature chosen), or a
        `warning` (files skipped) that a UI should show loudly."""

    def end_stage(self) -> None:
        """The current stage is finished."""
