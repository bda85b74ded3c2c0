"""Issue 23, the CLI contract as a new user meets it: bad option values are usage errors (exit 2,
click's usage hint, the message in option terms), warnings are one clean line (or the envelope's
"warnings" under --json), and messages say what to do with the folder or registry at hand."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import memreg_cli
from licences import licence_texts
from memreg.registry import Registry

pytestmark = pytest.mark.slow  # every check runs memreg in fresh processes (torch imported in each)


@pytest.fixture
def law_registry(tmp_path, tiny_package) -> str:
    """law@1.0.0, tagged stable, in a local registry."""
    url = str(tmp_path / "registry")
    memreg_cli("init", url, check=True)
    memreg_cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--tag", "stable",
               "--registry", url, check=True)
    return url


def _data(tmp_path) -> str:
    (tmp_path / "held.txt").write_text(licence_texts(["GPL-3"])[0][:1500])
    return str(tmp_path / "held.txt")


def _usage_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Usage: memreg" in proc.stderr and "Traceback" not in proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr
    for python_name in ("do_sample", "num_beams", "force=True", "weights="):
        assert python_name not in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, needles", [
    (["eval", "{base}", "--data", "{data}", "-m", "law=abc"], ["'--memory'", "'abc' in 'law=abc' is not a weight"]),
    (["eval", "{base}", "--data", "{data}", "-m", "law=1.5"], ["'--memory'", "1.5 is not in [0, 1]"]),
    (["eval", "{base}", "--data", "{data}", "-m", "law=0.6", "-m", "code=0.6"], ["'--memory'", "sum to 1.2 > 1"]),
    (["attach", "{base}", "law=2", "--prompt", "x"], ["'MEMORIES'", "2.0 is not in [0, 1]"]),
    (["attach", "{base}", "./law=-0.2", "--prompt", "x"], ["'MEMORIES'", "-0.2 is not in [0, 1]"]),
    (["attach", "{base}", "./law=heavy", "--prompt", "x"], ["'MEMORIES'", "'heavy' in './law=heavy' is not a weight"]),
    (["attach", "{base}", "law=0.3", "--prompt", "x", "--sample", "--temperature", "0"], ["'--temperature'", "> 0"]),
    (["attach", "{base}", "law=0.3", "--prompt", "x", "--top-p", "1.5"], ["'--top-p'", "(0, 1]"]),
    (["attach", "{base}", "law=0.3", "--prompt", "x", "--sample", "--beams", "2"], ["--sample and --beams 2"]),
    (["attach", "{base}", "law=0.3", "--prompt", "x", "--beams", "0"], ["'--beams'"]),
    (["attach", "{base}", "law=0.3"], ["give --prompt TEXT", "--eval FILES"]),
])
def test_bad_option_values_are_usage_errors_in_option_terms(tmp_path, args, needles):
    # the base does not exist: each value is refused before anything is loaded or opened
    args = [a.format(base=str(tmp_path / "no-such-base"), data=str(tmp_path)) for a in args]
    _usage_error(memreg_cli(*args, "--registry", str(tmp_path / "no-registry")), *needles)


@pytest.mark.parametrize("memories", [["law:stable=0.1", "law@1.0.0=0.3"], ["law=0.1", "law=0.2"]])
def test_one_memory_given_twice_is_refused_not_reported_once(tmp_path, tiny_package, law_registry, memories):
    args = [a for m in memories for a in ("-m", m)]
    proc = memreg_cli("eval", str(tiny_package), "--data", _data(tmp_path), *args, "--registry", law_registry, "--json")
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    err = json.loads(proc.stderr)["error"]
    assert err["exit_code"] == 2 and "give each memory once" in err["message"]
    assert all(m.split("=")[0] in err["message"] for m in memories), err["message"]


def test_two_distinct_memories_keep_both_weights(tmp_path, tiny_package, law_registry):
    proc = memreg_cli("eval", str(tiny_package), "--data", _data(tmp_path), "-m", "law:stable=0.1",
                      "-m", f"{tiny_package}=0.3", "--registry", law_registry, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["data"]["weights"] == {"law@1.0.0": 0.1, str(tiny_package): 0.3}


def test_compose_warnings_are_one_line_or_in_the_envelope(tmp_path, tiny_package, law_registry):
    memreg_cli("yank", "law@1.0.0", "--reason", "superseded", "--registry", law_registry, check=True)
    args = ["eval", str(tiny_package), "--data", _data(tmp_path), "-m", "law@1.0.0=0.3", "--registry", law_registry]
    proc = memreg_cli(*args, "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    (warning,) = json.loads(proc.stdout)["warnings"]
    assert "law@1.0.0 is yanked" in warning
    proc = memreg_cli(*args)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "yanked" in line]
    assert lines == [f"warning: {warning}"], proc.stderr
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr


def test_registry_warnings_go_into_the_envelope(law_registry):
    store = Registry.open(law_registry).store
    store.put_bytes("packages/Not A Name/1.0.0.json", b"{}")  # a stray entry: skipped with a warning
    proc = memreg_cli("list", "--registry", law_registry, "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    doc = json.loads(proc.stdout)
    assert [r["name"] for r in doc["data"]] == ["law"]
    (warning,) = doc["warnings"]
    assert "packages/Not A Name/: not a valid package name" in warning
    proc = memreg_cli("list", "--registry", law_registry)
    assert proc.stderr.splitlines() == [f"warning: {warning}"]  # one line, as before, and only once


def test_publish_without_a_card_asks_for_name_and_version(tmp_path, tiny_package, law_registry):
    folder = tmp_path / "plain"
    shutil.copytree(tiny_package, folder)  # a save_pretrained folder, no memreg.json
    _usage_error(memreg_cli("publish", str(folder), "--registry", law_registry),
                 "no memreg.json card", "give --name and --version")
    _usage_error(memreg_cli("publish", str(folder), "--name", "plain", "--registry", law_registry), "give --version")


def test_publish_of_a_peft_adapter_says_attach_it_or_merge_it(tmp_path, tiny_package, law_registry):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_package)}))
    shutil.copy(tiny_package / "model.safetensors", adapter / "adapter_model.safetensors")
    proc = memreg_cli("publish", str(adapter), "--name", "x", "--version", "1.0.0", "--registry", law_registry)
    assert proc.returncode == 1, proc.stderr
    assert "is a PEFT adapter" in proc.stderr and "memreg attach" in proc.stderr and "merge_and_unload" in proc.stderr
    assert "save the model with save_pretrained" not in proc.stderr


def test_list_filters_that_match_nothing_say_how_many_packages_there_are(tmp_path, law_registry):
    from tiny_lms import STDLIB, real_text, train_tokenizer

    other = tmp_path / "other-tokenizer"
    train_tokenizer(real_text(STDLIB), vocab_size=300).save_pretrained(other)
    out = memreg_cli("list", "--compatible-with", str(other), "--registry", law_registry, check=True).stdout
    assert out.strip() == f"1 package in {law_registry}, none of which is compatible with {other}"
    out = memreg_cli("list", "--domain", "code", "--registry", law_registry, check=True).stdout
    assert "none of which has domain label 'code'" in out
    empty = str(tmp_path / "empty")
    memreg_cli("init", empty, check=True)
    assert memreg_cli("list", "--domain", "code", "--registry", empty, check=True).stdout.strip() == f"no packages in {empty}"
