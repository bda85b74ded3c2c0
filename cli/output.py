"""Printing: rich tables and bars for people, JSON for scripts, one-line errors for everybody.

Under `--json` every command prints one envelope (see `envelope`), errors included (on stderr).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:  # fsspec loads with the registry, not for `memreg --help`
    from fsspec.callbacks import Callback

# Every C0 control but tab and newline, DEL, and every C1 control: ESC (0x1b) starts the terminal's
# escape sequences (OSC 52 writes the clipboard, CSI 2J clears the screen) and 0x9b is a CSI by itself.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """`text` with every control character shown as its Python escape (ESC as the four characters
    \\x1b): what a registry says reaches the terminal as characters, never as terminal commands."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def styled(text: str, style: str) -> Text:
    """`text` (any text, from a registry too) shown in a rich style, e.g. styled("FAIL", "red")."""
    return Text(clean(text), style=style)


class _LiteralConsole(Console):
    """A console that prints strings as they are. Registry text (descriptions, domain labels,
    licences, file paths, tag and yank reasons, warnings quoting them) is never rich markup here:
    markup and emoji codes are off unless a call passes markup=True for a constant string of
    memreg's own, and every string and table cell is `clean`ed on its way out (rich strips only BEL
    and CR). Styles come from `styled`. All command output goes through the two consoles below."""

    def __init__(self, *, stderr: bool) -> None:
        super().__init__(stderr=stderr, highlight=False, soft_wrap=True, markup=False, emoji=False)

    def render_str(self, text: str, **kwargs: Any) -> Text:  # rich turns every str it prints into Text here
        return super().render_str(clean(text), **kwargs)


console = _LiteralConsole(stderr=False)
err_console = _LiteralConsole(stderr=True)


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
        err_console.print(f"warning: {message}")


@contextmanager
def routed_warnings() -> Iterator[None]:
    """While a command runs, Python warnings (compose's UserWarnings, e.g. a yanked or forced memory)
    and the registry's logged ones (a malformed entry skipped) go through `warn`: one clean line on
    stderr, or the envelope's "warnings" under --json, never Python's `file:line: UserWarning` form
    with a source line. A logger handler on "memreg" also keeps logging's last-resort printer off."""
    import warnings

    handler = _WarnHandler(logging.WARNING)
    logger = logging.getLogger("memreg")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():  # restores showwarning and the filters on the way out
            warnings.showwarning = _show_warning
            yield
    finally:
        logger.removeHandler(handler)


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    warn(str(message))


class _WarnHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage().removeprefix("warning: "))  # the registry's records carry warn's own prefix


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
    from rich.markup import escape
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=err_console, transient=True,
    ) as progress:
        # the bar's description is rich markup: a folder named "docs[/x]" must show as it is
        yield _rich_callback(progress, progress.add_task(escape(clean(description)), total=None))


def _force_bars() -> bool:
    import os

    return os.environ.get("MEMREG_PROGRESS") == "1"


def json_mode() -> bool:
    return _Run.json_mode
