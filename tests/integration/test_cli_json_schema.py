"""Issue 11, the CLI contract: every command's --json output is the one documented envelope
(schemas/json/cli-output.schema.json), errors included; a yanked pull warns; unyank and
tag --force work from the command line."""

from __future__ import annotations

import json

import jsonschema
import pytest

from conftest import REPO
from conftest import memreg_in_process as memreg

SCHEMA = json.loads((REPO / "schemas" / "json" / "cli-output.schema.json").read_text())


def valid(text: str) -> dict:
    doc = json.loads(text)
    jsonschema.validate(doc, SCHEMA)
    return doc


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    url = str(tmp_path / "reg")

    def call(*args: str, registry: bool = True) -> tuple[int, str, str]:
        return memreg(monkeypatch, capsys, *args, *(["--registry", url] if registry else []), "--json")

    call.url = url
    return call


@pytest.mark.slow  # runs every registry command, publishing and pulling
def test_every_registry_command_prints_the_envelope(cli, tiny_package):
    seen = {}

    def ok(*args: str, registry: bool = True) -> dict:
        code, out, err = cli(*args, registry=registry)
        assert code == 0, err
        doc = valid(out)
        assert doc["ok"] is True and doc["command"] == args[0]
        seen[args[0]] = doc
        return doc["data"]

    assert ok("init", cli.url, registry=False)["registry"] == cli.url
    assert ok("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--tag", "prod")["created"]
    ok("publish", str(tiny_package), "--name", "law", "--version", "1.1.0")
    assert [r["version"] for r in ok("list")] == ["1.1.0"]
    assert ok("show", "law")["versions"] == ["1.0.0", "1.1.0"]
    assert ok("tag", "law@1.1.0", "stable")["previous"] is None
    assert ok("yank", "law@1.0.0", "--reason", "bad eval") == {"ref": "law@1.0.0", "yanked": True}
    pulled = ok("pull", "law@1.0.0")
    assert pulled["yanked"] is True
    assert any("law@1.0.0 is yanked" in w for w in seen["pull"]["warnings"])
    assert ok("verify")["problems"] == []
    assert ok("unyank", "law@1.0.0") == {"ref": "law@1.0.0", "yanked": False}
    assert not ok("pull", "law@1.0.0")["yanked"] and seen["pull"]["warnings"] == []
    assert ok("gc", "--dry-run")["dry_run"] is True
    assert set(seen) == {"init", "publish", "list", "show", "tag", "yank", "pull", "verify", "unyank", "gc"}


def test_errors_are_the_envelope_on_stderr(cli, tiny_package):
    cli("init", cli.url, registry=False)
    cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0")
    cli("yank", "law@1.0.0")
    code, out, err = cli("tag", "law@1.0.0", "prod")  # refused: yanked
    assert code == 1 and out == ""
    doc = valid(err)
    assert doc["error"]["type"] == "YankedVersionError" and "--force" in doc["error"]["message"]
    code, out, err = cli("tag", "law@1.0.0", "prod", "--force")
    assert code == 0 and valid(out)["data"]["version"] == "1.0.0"
    for args, code_ in ((("show", "nope@1.0.0"), 1), (("frobnicate",), 2), (("show",), 2)):
        code, out, err = cli(*args)
        assert code == code_ and out == ""
        assert valid(err)["error"]["exit_code"] == code_


def test_a_failed_verify_is_data_with_ok_false(cli, tiny_package):
    from memreg.registry import Registry

    cli("init", cli.url, registry=False)
    cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0")
    reg = Registry.open(cli.url)
    blob = next(k for k in reg.store.list("blobs") if reg.store.size(k) > 10000)
    data = bytearray(reg.store.read(blob))
    data[100] ^= 0xFF
    reg.store.put_bytes(blob, bytes(data))
    code, out, _ = cli("verify")
    doc = valid(out)
    assert code == 1 and doc["ok"] is False and doc["error"]["type"] == "VerifyFailed" and doc["data"]["problems"]


@pytest.mark.slow  # scores held-out text with base and memory
def test_eval_prints_the_envelope(cli, tmp_path, tiny_package):
    text = tmp_path / "held.txt"
    text.write_text((REPO / "README.md").read_text()[:3000])
    code, out, err = cli("eval", str(tiny_package), "--memory", f"{tiny_package}=0.3", "--data", str(text),
                         "--context", "32", registry=False)
    assert code == 0, err
    doc = valid(out)
    assert doc["command"] == "eval" and doc["data"]["tokens"] > 100


def test_the_schema_refuses_a_shape_that_drifted():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"ok": True, "command": "pull", "data": {"ref": "law@1.0.0"}, "warnings": []}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):  # the pre-envelope shape of `tag --json`
        jsonschema.validate({"name": "law", "tag": "prod", "version": "1.0.0", "previous": None}, SCHEMA)
