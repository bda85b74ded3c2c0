"""The registry commands as a user runs them: `python -m memreg …` in a fresh process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from conftest import REPO, memreg_cli, one_line_error
import memreg
from memreg.registry import Registry

pytestmark = pytest.mark.slow  # each test runs memreg in several fresh processes


@pytest.fixture
def reg_url(tmp_path) -> str:
    url = str(tmp_path / "registry")
    memreg_cli("init", url, check=True)
    return url


def _snapshot(url: str) -> dict[str, bytes]:
    reg = Registry.open(url)
    return {k: reg.store.read(k) for k in reg.store.list("")}


def test_publish_list_show_pull_json(reg_url, tiny_package):
    out = memreg_cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--domain", "law",
                     "--tag", "stable", "--registry", reg_url, "--json", check=True)
    pub = json.loads(out.stdout)["data"]
    assert pub["created"] and pub["tags_moved"] == {"stable": None} and pub["domain"] == ["law"]
    listed = json.loads(memreg_cli("list", "--registry", reg_url, "--json", check=True).stdout)["data"]
    assert [(r["name"], r["version"], r["tags"]) for r in listed] == [("law", "1.0.0", ["stable"])]
    shown = json.loads(memreg_cli("show", "law:stable", "--registry", reg_url, "--json", check=True).stdout)["data"]
    assert shown["manifest"]["model"]["parameter_count"] == pub["parameters"] > 0
    pulled = memreg_cli("pull", "law", "--registry", reg_url, check=True).stdout.strip()
    assert (tiny_package / "model.safetensors").read_bytes() == open(os.path.join(pulled, "model.safetensors"), "rb").read()
    compat = json.loads(memreg_cli("list", "--compatible-with", str(tiny_package), "--registry", reg_url,
                                   "--json", check=True).stdout)["data"]
    assert [r["name"] for r in compat] == ["law"]


def test_registry_from_environment(tmp_path, tiny_package):
    url = str(tmp_path / "env-registry")
    memreg_cli("init", url, check=True)
    memreg_cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", check=True,
               env={"MEMREG_REGISTRY": url})
    assert Registry.open(url).versions("law") == ["1.0.0"]


def test_default_registry_lives_under_memreg_home(memreg_home, tiny_package):
    memreg_cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", check=True)
    assert (memreg_home / "registry" / "packages" / "law" / "1.0.0.json").is_file()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--name", "../x", "--version", "1.0.0"], "'../x' is not a valid name"),
        (["--name", "A B", "--version", "1.0.0"], "'A B' is not a valid name"),
        (["--name", "law", "--version", "1.2"], "law@1.2 is not a version"),
        (["--name", "law", "--version", "1.0.0", "--tag", "Bad Tag"], "'Bad Tag' is not a valid tag"),
    ],
)
def test_bad_names_and_versions_are_refused_before_any_io(reg_url, tiny_package, args, needle):
    before = _snapshot(reg_url)
    one_line_error(memreg_cli("publish", str(tiny_package), *args, "--registry", reg_url), needle)
    assert _snapshot(reg_url) == before


@pytest.mark.parametrize("ref", ["../x", "A B", "law@1.2", "law@1.0.0:stable", ""])
def test_bad_refs_are_refused(reg_url, ref):
    for cmd in ("pull", "show", "verify"):
        one_line_error(memreg_cli(cmd, ref, "--registry", reg_url))


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda p: [os.remove(p / "tokenizer.json")], "no tokenizer files"),
        (lambda p: (p / "pytorch_model.bin").write_bytes(b"\x80\x04"), "pytorch_model.bin: .bin files may hold pickles"),
        (lambda p: (p / "optimizer.pt").write_bytes(b"\x80\x04"), "optimizer.pt"),
        (lambda p: (p / "state.pkl").write_bytes(b"\x80\x04"), "state.pkl"),
        (lambda p: os.symlink(p / "config.json", p / "alias.json"), "is a symbolic link"),
        (lambda p: (p / "memreg.json").write_text("{not json"), "memreg.json is not a valid memreg card"),
        (lambda p: (p / "memreg.json").write_text('{"format_version": 2}'), "format_version 2 is not supported"),
        (lambda p: (p / "modeling_evil.py").write_text("import os"), "may not carry code"),
    ],
)
def test_bad_package_folders_are_refused_and_nothing_is_written(reg_url, package_copy, damage, needle):
    damage(package_copy)
    before = _snapshot(reg_url)
    proc = memreg_cli("publish", str(package_copy), "--name", "law", "--version", "1.0.0", "--registry", reg_url)
    one_line_error(proc, needle)
    assert _snapshot(reg_url) == before


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda m: m["model"]["files"][0].update(path="../../outside.json"), "escapes the package folder"),
        (lambda m: m.update(format_version=2), "format_version 2 is not supported"),
        (lambda m: m.update(surprise=True), "Extra inputs are not permitted"),
    ],
)
def test_tampered_manifests_are_refused_and_nothing_enters_the_cache(reg_url, tiny_package, memreg_home, edit, needle):
    memreg_cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--registry", reg_url, check=True)
    reg = Registry.open(reg_url)
    doc = json.loads(reg.store.read("packages/law/1.0.0.json"))
    edit(doc)
    reg.store.put_bytes("packages/law/1.0.0.json", json.dumps(doc).encode())
    one_line_error(memreg_cli("pull", "law@1.0.0", "--registry", reg_url), needle)
    assert not (memreg_home / "cache").exists() or not any((memreg_home / "cache").rglob("*.json"))
    assert not (memreg_home.parent / "outside.json").exists()


def test_malformed_stored_manifest(reg_url, tiny_package):
    memreg_cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--registry", reg_url, check=True)
    Registry.open(reg_url).store.put_bytes("packages/law/1.0.0.json", b"{oops")
    one_line_error(memreg_cli("show", "law", "--registry", reg_url), "packages/law/1.0.0.json is not a valid Manifest")


def test_unknown_registry_url_says_how_to_create_one(tmp_path):
    one_line_error(memreg_cli("list", "--registry", str(tmp_path / "nothing")), "memreg init")


def test_verify_exit_code_names_the_corrupt_blob(reg_url, tiny_package):
    out = json.loads(memreg_cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0",
                                "--registry", reg_url, "--json", check=True).stdout)["data"]
    assert memreg_cli("verify", "--registry", reg_url).returncode == 0
    reg = Registry.open(reg_url)
    blob = next(k for k in reg.store.list("blobs") if reg.store.size(k) > 10000)
    data = bytearray(reg.store.read(blob))
    data[100] ^= 0xFF
    reg.store.put_bytes(blob, bytes(data))
    proc = memreg_cli("verify", "--registry", reg_url, "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert not report["ok"] and blob.rsplit("/", 1)[1] in report["data"]["problems"][0]
    assert out["name"] == "law"


NO_TORCH = textwrap.dedent("""
    import json, sys
    from memreg.cli.main import app
    for args in json.loads(sys.argv[1]):
        try:
            app(args, standalone_mode=False)
        except SystemExit:
            pass
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers", "faiss", "peft"})
    print("HEAVY=" + json.dumps(heavy))
""")


def test_registry_commands_import_neither_torch_nor_transformers(tmp_path, tiny_package):
    url = str(tmp_path / "registry")
    commands = [["init", url], ["publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--registry", url],
                ["list", "--registry", url], ["show", "law", "--registry", url], ["pull", "law", "--registry", url],
                ["verify", "--registry", url], ["tag", "law@1.0.0", "stable", "--registry", url],
                ["yank", "law@1.0.0", "--registry", url], ["gc", "--registry", url],
                ["list", "--compatible-with", str(tiny_package), "--registry", url]]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, json.dumps(commands)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    heavy = json.loads(proc.stdout.rsplit("HEAVY=", 1)[1])
    assert heavy == []
    assert Registry.open(url).yanked("law") == {"1.0.0"}


def test_help_teaches(tmp_path):
    out = memreg_cli("publish", "--help", check=True).stdout
    assert "--registry" in out and "--tag" in out and "safetensors" in out
    overview = memreg_cli("--help", check=True).stdout
    for command in ("init", "publish", "pull", "list", "show", "verify", "tag", "yank", "unyank", "gc"):
        assert re.search(rf"^\W*{command}\s+\w", overview, re.M), f"`memreg --help` does not list {command}"


def test_the_installed_memreg_command_is_the_cli():
    """`pip install` puts a `memreg` script next to this interpreter: it must run the same CLI as
    `python -m memreg` (a wrong entry point in pyproject.toml would leave it broken or missing)."""
    script = shutil.which("memreg", path=sysconfig.get_path("scripts"))
    assert script, f"no memreg script in {sysconfig.get_path('scripts')}: is the project installed?"
    args = ["publish", "--help"]
    installed = subprocess.run([script, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout == memreg_cli(*args, check=True).stdout
    version = subprocess.run([script, "--version"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert version.returncode == 0 and memreg.__version__ in version.stdout, (version.stdout, version.stderr)


def test_show_says_why_a_version_was_yanked(reg_url, tiny_package):
    """pull and compose warn "`memreg show REF` says why": show prints the yank record's reason."""
    memreg_cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--registry", reg_url, check=True)
    memreg_cli("yank", "law@1.0.0", "--reason", "trained on the wrong licences", "--registry", reg_url, check=True)
    text = memreg_cli("show", "law@1.0.0", "--registry", reg_url, check=True).stdout
    assert "yanked" in text and "UTC: trained on the wrong licences" in text
    data = json.loads(memreg_cli("show", "law@1.0.0", "--registry", reg_url, "--json", check=True).stdout)["data"]
    assert data["yank"]["reason"] == "trained on the wrong licences" and data["yanked"] == ["1.0.0"]
    memreg_cli("unyank", "law@1.0.0", "--registry", reg_url, check=True)
    data = json.loads(memreg_cli("show", "law@1.0.0", "--registry", reg_url, "--json", check=True).stdout)["data"]
    assert data["yank"] is None and data["yanked"] == []
