"""`memreg eval --plot` without matplotlib (the `plot` extra) fails at once, in one line that
names the extra, before any model is loaded or any text scored."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from conftest import memreg_in_process as _memreg

REPO = Path(__file__).resolve().parents[2]


def test_plot_without_matplotlib_names_the_extra_before_loading_models(monkeypatch, capsys, tmp_path):
    import memreg.compose

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails, as when absent
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded before the missing plot extra was reported")

    monkeypatch.setattr(memreg.compose, "compose", no_models)
    data = tmp_path / "held.txt"
    data.write_text("held-out text")
    code, out, err = _memreg(monkeypatch, capsys, "eval", str(tmp_path / "no-base"), "--memory", "law",
                             "--data", str(data), "--sweep", "--plot", str(tmp_path / "sweep.png"))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "memreg[plot]" in lines[0] and "matplotlib" in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "sweep.png").exists()


def test_extras_declare_plot_and_test_includes_it():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(d.startswith("matplotlib") for d in extras["plot"])
    assert "memreg[plot]" in extras["test"]
    declared = project["dependencies"] + [d for group in extras.values() for d in group]
    assert not [d for d in declared if d.startswith(("packaging", "tqdm"))]  # nothing imports them
