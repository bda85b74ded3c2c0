"""Printing: rich tables and bars for people, JSON for scripts, one-line errors for everybody.

Under `--json` every command prints one envelope (see `envelope`), errors included (on stderr).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from rich.console import Console

if TYPE_CHECKING:  # fsspec loads with the registry, not for `memreg --help`
    from fsspec.callbacks import Callback

console = Console(stderr=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class _Run:
    """What the envelope needs to know about this invocation (set by the app's callback and `run`)."""

    command: str | None = None
    json_mode: bool = False
    warnings: list[str] = []


def start(command: str | None, *, json_mode: bool | None = None) -> None:
    _Run.command = command
    _Run.warnings = []
    if json_mode is not None:
        _Run.json_mode = json_mode


def envelope(data: Any = None, *, ok: bool = True, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one shape every `--json` output has (schemas/json/cli-output.schema.json):
    {"ok", "command", "data", "warnings"} and, when ok is false, "error": {"type", "message", "exit_code"}."""
    out: dict[str, Any] = {"ok": ok, "command": _Run.command, "data": data, "warnings": list(_Run.warnings)}
    if error is not None:
        out["error"] = error
    return out


def print_json(data: Any, *, ok: bool = True, error: dict[str, Any] | None = None) -> None:
    """The command's result, inside the envelope, on stdout."""
    sys.stdout.write(json.dumps(envelope(data, ok=ok, error=error), indent=2, default=str) + "\n")


def print_json_error(type_: str, message: str, exit_code: int) -> None:
    """A failure under --json: the envelope on stderr, stdout left empty."""
    err = {"type": type_, "message": message, "exit_code": exit_code}
    sys.stderr.write(json.dumps(envelope(None, ok=False, error=err), default=str) + "\n")  # one line, as errors are


def warn(message: str) -> None:
    """A warning: one line on stderr for people; inside the envelope's "warnings" under --json."""
    _Run.warnings.append(message)
    if not _Run.json_mode:
        err_console.print(f"warning: {message}", markup=False)


def _rich_callback(progress: Any, task: Any) -> Callback:
    """An fsspec Callback drawing one rich progress bar of bytes (on stderr)."""
    from fsspec.callbacks import Callback

    class RichCallback(Callback):
        def set_size(self, size: int) -> None:
            super().set_size(size)
            progress.update(task, total=size)

        def relative_update(self, inc: int = 1) -> None:
            super().relative_update(inc)
            progress.update(task, advance=inc)

        def branched(self, path_1: str, path_2: str, **kwargs: Any) -> None:
            return None  # one bar for the whole operation

    return RichCallback()


@contextmanager
def byte_progress(description: str, *, enabled: bool = True) -> Iterator[Callback | None]:
    """A bar of bytes on stderr, or None (no progress; fsspec is then not even imported)."""
    if not enabled or not err_console.is_terminal and not _force_bars():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=err_console, transient=True,
    ) as progress:
        yield _rich_callback(progress, progress.add_task(description, total=None))


def _force_bars() -> bool:
    import os

    return os.environ.get("MEMREG_PROGRESS") == "1"


def json_mode() -> bool:
    return _Run.json_mode
