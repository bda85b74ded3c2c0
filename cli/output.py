"""Printing: rich tables and bars for people, JSON for scripts, one-line errors for everybody."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from fsspec.callbacks import Callback
from rich.console import Console

console = Console(stderr=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class RichCallback(Callback):
    """An fsspec Callback drawing one rich progress bar of bytes (on stderr)."""

    def __init__(self, progress: Any, task: Any) -> None:
        super().__init__()
        self._progress, self._task = progress, task

    def set_size(self, size: int) -> None:
        super().set_size(size)
        self._progress.update(self._task, total=size)

    def relative_update(self, inc: int = 1) -> None:
        super().relative_update(inc)
        self._progress.update(self._task, advance=inc)

    def branched(self, path_1: str, path_2: str, **kwargs: Any) -> None:
        return None  # one bar for the whole operation


@contextmanager
def byte_progress(description: str, *, enabled: bool = True) -> Iterator[Callback]:
    from fsspec.callbacks import NoOpCallback

    if not enabled or not err_console.is_terminal and not _force_bars():
        yield NoOpCallback()
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=err_console, transient=True,
    ) as progress:
        yield RichCallback(progress, progress.add_task(description, total=None))


def _force_bars() -> bool:
    import os

    return os.environ.get("MEMREG_PROGRESS") == "1"
