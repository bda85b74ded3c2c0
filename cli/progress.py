"""Progress of long model work (scoring held-out text, Hub downloads), drawn on stderr.

The SDK only calls callbacks (an fsspec `Callback` for counts); this module decides what a person
sees: a bar on a terminal (or wherever MEMREG_PROGRESS=1, as for pull's bars), nothing under
--json / --quiet. Like `memreg train`'s bars, a count bar stays on screen when done.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from memreg.cli.output import _force_bars, _rich_callback, err_console

if TYPE_CHECKING:
    from fsspec.callbacks import Callback


@contextmanager
def count_progress(description: str, *, unit: str, enabled: bool) -> Iterator[Callback | None]:
    """A bar of `unit`s (e.g. tokens scored) on stderr, or None: disabled, or stderr is not a
    terminal (a script reading it gets its one-line errors alone) and MEMREG_PROGRESS is not 1."""
    if not enabled or not err_console.is_terminal and not _force_bars():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console) as progress:
        yield _rich_callback(progress, progress.add_task(description, total=None))


def model_loading_bars(*, downloads: bool) -> None:
    """transformers' own per-load bars off (they flash by for local folders), the Hub's download
    bars on unless `downloads` is False: a base fetched from the Hub takes minutes, and was silent.

    transformers' switch turns the Hub's bars off too, so they are turned back on after it. A
    HF_HUB_DISABLE_PROGRESS_BARS the user set (`memreg --json/--quiet` set it too) wins over both
    calls; the warnings huggingface_hub gives then are expected, not news."""
    import warnings

    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_logging.disable_progress_bar()
        if downloads:
            hub_utils.enable_progress_bars()
