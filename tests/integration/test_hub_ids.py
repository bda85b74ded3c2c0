"""Hugging Face Hub ids where memreg takes a model: `list --compatible-with org/name` reads the
tokenizer from the Hub cache (offline here), as compose does for memories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # runs memreg in a fresh process with a Hub cache


def _hub_cache(root, repo_id: str, folder) -> None:
    """A snapshot laid out as huggingface_hub writes it: refs/main names the snapshot folder."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_list_compatible_with_a_cached_hub_model(tmp_path, tiny_package):
    from memreg.registry import Registry

    reg = Registry.init(str(tmp_path / "reg"))
    reg.publish(tiny_package, name="law", version="1.0.0")
    _hub_cache(tmp_path / "hub", "acme/base-model", tiny_package)  # a model repo: config, weights, tokenizer
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}

    def run(model: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "memreg", "list", "--registry", str(tmp_path / "reg"),
                               "--compatible-with", model, "--json"], capture_output=True, text=True, env=env, cwd=REPO)

    found = run("acme/base-model")
    assert found.returncode == 0, found.stderr
    assert [p["name"] for p in json.loads(found.stdout)["data"]] == ["law"]
    missing = run("acme/not-cached")
    assert missing.returncode == 2 and "acme/not-cached is neither a folder nor a Hub model" in missing.stderr
