"""The warning when no trained checkpoint beat the init suggests the OTHER selection rule, never the one in use."""

from __future__ import annotations

import pytest

from memreg.train.pipeline import _warn_about_quality


class _Notes:
    def __init__(self) -> None:
        self.lines: list[tuple[str, bool]] = []

    def note(self, message: str, *, warning: bool = False) -> None:
        self.lines.append((message, warning))


@pytest.mark.parametrize("select_on, judged, other", [
    ("memory", "the memory alone", "--select-on mixture"),
    ("mixture", "base + memory", "--select-on memory"),
])
def test_init_kept_warning_names_the_other_rule(select_on, judged, other):
    notes = _Notes()
    metas = {"train": {"curve": [{"step": 0}], "best_step": 0, "steps": 12, "select_on": select_on}, "eval": {}}
    _warn_about_quality(notes, metas)
    [(message, warning)] = notes.lines
    assert warning and judged in message and other in message
    assert f"--select-on {select_on}" not in message


def test_no_warning_when_a_trained_step_won():
    notes = _Notes()
    _warn_about_quality(notes, {"train": {"curve": [{"step": 0}], "best_step": 6, "steps": 12,
                                          "select_on": "memory"}, "eval": {}})
    assert notes.lines == []
