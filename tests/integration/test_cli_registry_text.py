"""Issue 23: text a registry serves (descriptions, domain labels, licences, file paths) is shown as
characters, never read as rich markup or sent to the terminal as control sequences.

Before, one description with `[/...]` in it made `memreg list` fail for the whole registry (rich's
MarkupError), and an ESC sequence in a manifest (OSC 52 writes the clipboard) reached the terminal.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import memreg_cli
from licences import licence_texts
from memreg.registry import Registry

pytestmark = pytest.mark.slow  # a property test that runs memreg in fresh processes

DESCRIPTION = ("Debian licences [/usr/share/common-licenses] [bold red]loud[/] :warning: "
               "\x1b]52;c;aGVsbG8=\x07 \x1b[2J \x9b31m end")
DOMAIN = "law[/x]"
LICENCE = "[link=https://example.invalid]GPL-3[/link]\x1b[31m"
DOC = "docs[/x]readme.txt"  # a folder "docs[" holding "x]readme.txt"
WIDE = {"COLUMNS": "400"}  # one table row per line, so a description is found whole
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.fixture(params=["local", "s3"])
def hostile(request, tmp_path, package_copy) -> str:
    """A registry holding law@1.0.0 published with markup and escape sequences in its text."""
    url = str(tmp_path / "registry") if request.param == "local" else request.getfixturevalue("s3_url")
    memreg_cli("init", url, check=True)
    doc = package_copy / DOC
    doc.parent.mkdir()
    doc.write_text(licence_texts(["GPL-3"])[0][:2000])
    memreg_cli("publish", str(package_copy), "--name", "law", "--version", "1.0.0", "--description", DESCRIPTION,
               "--domain", DOMAIN, "--license", LICENCE, "--registry", url, check=True, env=WIDE)
    return url


def _shown(*args: str, code: int = 0) -> str:
    proc = memreg_cli(*args, env=WIDE)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert not CONTROL.search(proc.stdout + proc.stderr), repr(proc.stdout + proc.stderr)  # no ESC, BEL, C1
    return proc.stdout


def test_list_show_and_verify_print_registry_text_literally(hostile):
    shown = DESCRIPTION.replace("\x1b", r"\x1b").replace("\x07", r"\x07").replace("\x9b", r"\x9b")
    for args in (["list"], ["list", "--all"], ["show", "law"]):
        out = _shown(*args, "--registry", hostile)
        assert shown in out and DOMAIN in out, out
    out = _shown("show", "law@1.0.0", "--registry", hostile)
    assert DOC in out and r"[link=https://example.invalid]GPL-3[/link]\x1b[31m" in out
    assert "ok: 1 versions" in _shown("verify", "--registry", hostile)


def test_verify_reports_a_corrupt_file_whose_path_looks_like_markup(hostile):
    from memreg.registry.layout import blob_key

    reg = Registry.open(hostile)
    entry = next(f for f in reg.resolve("law@1.0.0").model.files if f.path == DOC)
    data = bytearray(reg.store.read(blob_key(entry)))
    data[10] ^= 0x01
    reg.store.put_bytes(blob_key(entry), bytes(data))
    out = _shown("verify", "--registry", hostile, code=1)
    fail = [line for line in out.splitlines() if line.startswith("FAIL ")]
    assert len(fail) == 1 and DOC in fail[0], out  # the report is printed, the path as it is
    assert "FAILED: 1 versions" in out


def test_an_error_quoting_escape_sequences_shows_them_escaped(tmp_path):
    memreg_cli("init", str(tmp_path / "reg"), check=True)
    proc = memreg_cli("publish", str(tmp_path / "pkg\x1b]0;pwned\x07"), "--name", "law", "--version", "1.0.0",
                      "--registry", str(tmp_path / "reg"))
    assert proc.returncode != 0 and not CONTROL.search(proc.stderr.rstrip("\n")), repr(proc.stderr)
    assert r"pkg\x1b]0;pwned\x07" in proc.stderr


def test_attach_streams_generated_text_as_characters(tiny_package):
    # the streamer prints the prompt too (skip_prompt=False): an ESC in it stands for one the models emit
    proc = memreg_cli("attach", str(tiny_package), f"{tiny_package}=0.5", "--prompt", "Licence \x1b]52;c;aGk=\x07\x1b[2J",
                      "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(r"Licence \x1b]52;c;aGk=\x07\x1b[2J") and not CONTROL.search(proc.stdout.rstrip("\n"))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_the_console_prints_any_text_as_characters(text):
    from memreg.cli.output import clean, console

    with console.capture() as cap:
        console.print(text)
    out = cap.get()
    assert not CONTROL.search(out.replace("\n", ""))
    assert "\x1b" not in out
    if "\t" not in text:  # rich expands tabs; everything else is printed as given, controls escaped
        assert out == clean(text) + "\n"
