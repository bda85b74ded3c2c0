"""Issue 11, the CLI contract as a script uses it: click's exit codes (2 for usage, with the usage
hint), --version, shell completion, and errors as the JSON envelope on stderr under --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, memreg_cli


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "No such command 'frobnicate'"),
    (["show"], "Missing argument"),
    (["list", "--no-such-option"], "No such option"),
    (["gc", "--grace", "soon"], "Invalid value for '--grace'"),
])
def test_usage_errors_exit_2_with_clicks_usage_hint(args, message):
    proc = memreg_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Usage: memreg" in proc.stderr and "--help" in proc.stderr and message in proc.stderr
    assert "UsageError" not in proc.stderr and "MissingParameter" not in proc.stderr  # no class names


def test_usage_error_under_json_is_the_envelope_on_stderr():
    proc = memreg_cli("show", "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    doc = json.loads(proc.stderr)
    assert doc["ok"] is False and doc["command"] == "show"
    assert doc["error"]["exit_code"] == 2 and "Missing argument" in doc["error"]["message"]


def test_a_failure_under_json_is_the_envelope_on_stderr_exit_1(tmp_path):
    proc = memreg_cli("show", "nothere@1.0.0", "--json", "--registry", str(tmp_path / "none"))
    assert proc.returncode == 1 and proc.stdout == ""
    doc = json.loads(proc.stderr)
    assert doc == {"ok": False, "command": "show", "data": None, "warnings": [],
                   "error": {"type": "RegistryNotFoundError", "message": doc["error"]["message"], "exit_code": 1}}
    assert str(tmp_path / "none") in doc["error"]["message"]


def test_version():
    from memreg import __version__

    proc = memreg_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"memreg {__version__}"


def test_shell_completion_completes_commands():
    proc = memreg_cli(env={"_MEMREG_COMPLETE": "complete_bash", "COMP_WORDS": "memreg pu", "COMP_CWORD": "1"})
    assert proc.returncode == 0 and proc.stdout.split() == ["publish", "pull"]
    # typer finds the user's shell among the process's ancestors (shellingham): run it from bash, as a
    # user does, so the test does not depend on how pytest itself was started (a detached pytest has none)
    script = subprocess.run(["bash", "-c", '"$0" -m memreg --show-completion bash; exit $?', sys.executable],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert script.returncode == 0 and "_MEMREG_COMPLETE" in script.stdout, script.stderr


def test_eval_skips_binary_files_as_train_does(tmp_path, capsys):
    from memreg.cli import output
    from memreg.cli.attach import _read_texts

    output.start("eval", json_mode=False)
    (tmp_path / "a.txt").write_text("plain text that is scored")
    (tmp_path / "b.bin").write_bytes(b"\x7fELF\x00\x01" + bytes(range(256)))
    (tmp_path / "c.txt").write_bytes(b"caf\xe9 latin-1")
    assert _read_texts([tmp_path]) == ["plain text that is scored"]
    err = capsys.readouterr().err
    assert "b.bin (binary)" in err and "c.txt (not UTF-8" in err
    (tmp_path / "a.txt").unlink()
    with pytest.raises(FileNotFoundError, match="2 skipped"):
        _read_texts([tmp_path])


@pytest.mark.parametrize("args", [["--context", "1"], ["--context", "0"], ["--context", "8", "--stride", "0"]])
def test_eval_refuses_windows_that_cannot_score_before_loading_anything(tmp_path, args):
    proc = memreg_cli("eval", str(tmp_path / "no-such-model"), "--data", str(tmp_path), *args, timeout=60)
    assert proc.returncode == 2 and "Invalid value for '--" in proc.stderr  # not a hang, not a load error
