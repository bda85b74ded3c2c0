"""Issue 23: `eval`, `attach --eval` and `tune` show progress on stderr (none under --json or --quiet),
and `-h` is `--help` everywhere. Hub download bars: test_hub_download_bars.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)

from conftest import memreg_cli, memreg_in_process
from tiny_lms import LICENSES, gpt2, llama, real_text, save_package, train_tokenizer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    tok = train_tokenizer(real_text(LICENSES))
    v = len(tok)
    base = save_package(gpt2(v, 0), tok, root / "base")
    mem = save_package(llama(v, 1), tok, root / "law", recommended_weight=0.3, name="law")
    data = root / "held.txt"
    data.write_text(Path(LICENSES[1]).read_text()[:1500])
    return {"base": str(base), "mem": str(mem), "data": str(data)}


def _commands(world) -> dict[str, list[str]]:
    window = ["--context", "64", "--stride", "32"]
    return {
        "eval": ["eval", world["base"], "--data", world["data"], "--memory", world["mem"], *window],
        "attach": ["attach", world["base"], world["mem"], "--eval", world["data"], *window],
        "tune": ["tune", world["base"], world["mem"], "--data", world["data"], *window],
    }


@pytest.mark.slow  # scores base and memory four times per command
@pytest.mark.parametrize("command", ["eval", "attach", "tune"])
def test_long_scoring_shows_a_bar_of_tokens_on_stderr_and_none_under_json_or_quiet(world, monkeypatch, capsys, command):
    monkeypatch.setenv("MEMREG_PROGRESS", "1")  # stderr is captured, not a terminal: draw as if it were
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "")  # run() must not leak its setting to later tests
    args = _commands(world)[command]
    code, out, err = memreg_in_process(monkeypatch, capsys, *args)
    assert code == 0, err
    bar = [line for line in err.splitlines() if line.startswith("scoring")]
    assert len(bar) == 1, err
    done, total = bar[0].split("tokens")[0].split()[-1].split("/")
    assert done == total and int(total) > 0  # base + memory, every scored token counted once
    for quiet in ("--json", "--quiet"):
        code, out, err = memreg_in_process(monkeypatch, capsys, *args, quiet)
        assert code == 0, err
        assert "scoring" not in err and "━" not in err, err
    assert json.loads(memreg_in_process(monkeypatch, capsys, *args, "--json")[1])["ok"] is True  # stdout stays one document


def test_the_bar_counts_each_member_once_per_scored_token(world, monkeypatch, capsys):
    """The callback is told the whole job first (members x scored tokens), and reaches it exactly."""
    from fsspec.callbacks import Callback

    from memreg.compose import compose, member_target_log_probs

    class Record(Callback):
        pass

    cb = Record()
    model = compose(world["base"], [world["mem"]], [0.3])
    lps = member_target_log_probs(model, [Path(world["data"]).read_text()], context=64, stride=32, progress=cb)
    assert cb.size == cb.value == sum(lp.size for lp in lps) == 2 * lps[0].size


@pytest.mark.slow  # a fresh memreg process per command
@pytest.mark.parametrize("args", [[], ["list"], ["cache"], ["cache", "ls"], ["train"], ["eval"], ["tune"], ["attach"],
                                  ["convert-gguf"], ["publish"]])
def test_dash_h_is_help_everywhere(args):
    proc = memreg_cli(*args, "-h")
    assert proc.returncode == 0, proc.stderr
    assert f"Usage: memreg {' '.join(args)}".rstrip() + " [OPTIONS]" in proc.stdout, proc.stdout
    assert "-h" in proc.stdout and "--help" in proc.stdout
