"""`memreg eval --sweep --plot`: the image draws the sweep the command reports, and without
matplotlib (the `plot` extra) the command fails at once, in one line that names the extra, before
any model is loaded or any text scored."""

from __future__ import annotations

import json
import struct
import sys

import matplotlib.figure  # the test extra installs the plot extra: a missing one must fail, not skip
import pytest

from conftest import memreg_in_process as _memreg
from licences import licence_texts
from tiny_lms import gpt2, llama, save_package, train_tokenizer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("plot")
    tok = train_tokenizer(licence_texts())
    base = save_package(gpt2(len(tok), 0), tok, root / "base")
    mem = save_package(llama(len(tok), 1), tok, root / "law", recommended_weight=0.3, name="law")
    data = root / "held.txt"
    data.write_text(licence_texts(["MPL-2.0"])[0][:1500])
    return {"base": str(base), "mem": str(mem), "data": str(data)}


def test_the_plot_draws_the_sweep_the_command_reports(world, monkeypatch, capsys, tmp_path):
    drawn: list[list[tuple[str, list[float], list[float]]]] = []
    savefig = matplotlib.figure.Figure.savefig

    def keep_lines(fig, *args, **kwargs):
        drawn.append([(line.get_label(), [float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
                      for ax in fig.axes for line in ax.get_lines()])
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep_lines)
    png = tmp_path / "sweep.png"
    code, out, err = _memreg(monkeypatch, capsys, "eval", world["base"], "--memory", world["mem"], "--data",
                             world["data"], "--context", "64", "--stride", "32", "--sweep", "--plot", str(png), "--json")
    assert code == 0, err
    result = json.loads(out)["data"]
    assert result["plot"] == str(png)
    image = png.read_bytes()
    assert image[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", image[16:24])  # the IHDR chunk: a real, non-empty picture
    assert width > 100 and height > 100
    [(name, curve)] = result["sweep"].items()
    assert len(curve) == 21 and curve["0.0"] == pytest.approx(result["perplexity_base"])  # weight 0: the base alone
    [lines] = drawn
    assert lines[0] == (name, [float(w) for w in curve], list(curve.values()))
    label, _, level = lines[1]
    assert label == "base alone" and level == [result["perplexity_base"]] * 2


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
