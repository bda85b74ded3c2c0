"""`memreg attach --draft memory|lookup|none`: drafting changes the speed, never the greedy text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_lms import LICENSES, gpt2, llama, real_text, save_package, train_tokenizer
from conftest import memreg_in_process as memreg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("attach-draft")
    tok = train_tokenizer(real_text(LICENSES))
    v = len(tok)
    base = save_package(gpt2(v, 0, layers=3, width=48), tok, root / "base")
    mem = save_package(llama(v, 1, rows=v + 3), tok, root / "law", recommended_weight=0.4, name="law")
    return {"base": str(base), "mem": str(mem)}


def _completion(monkeypatch, capsys, world, *extra: str) -> dict:
    # the prompt repeats itself, so prompt lookup has drafts to propose
    prompt = "Everyone is permitted to copy and distribute. Everyone is permitted to"
    code, out, err = memreg(monkeypatch, capsys, "attach", world["base"], world["mem"], "--prompt", prompt,
                            "--max-new-tokens", "12", "--json", *extra)
    assert code == 0, err
    return json.loads(out)["data"]


@pytest.mark.slow
def test_drafted_greedy_text_equals_undrafted(world, monkeypatch, capsys):
    plain = _completion(monkeypatch, capsys, world)
    assert "draft" not in plain
    for source in ("memory", "lookup"):
        drafted = _completion(monkeypatch, capsys, world, "--draft", source)
        assert drafted["completion"] == plain["completion"]
        assert drafted["draft"]["source"] == source and drafted["draft"]["rounds"] >= 1
        assert 0 <= drafted["draft"]["accepted"] <= drafted["draft"]["drafted"]
    memory = _completion(monkeypatch, capsys, world, "--draft", "memory")
    assert memory["draft"]["drafted"] > 0  # the memory always proposes
    none = _completion(monkeypatch, capsys, world, "--draft", "none")
    assert none == plain


def test_draft_refuses_beams_and_unknown_sources(world, monkeypatch, capsys):
    code, out, err = memreg(monkeypatch, capsys, "attach", world["base"], world["mem"], "--prompt", "The licence",
                            "--draft", "memory", "--beams", "2")
    assert code == 2 and "--beams" in err and "--draft" in err
    code, out, err = memreg(monkeypatch, capsys, "attach", world["base"], world["mem"], "--prompt", "The licence",
                            "--draft", "oracle")
    assert code == 2 and "oracle" in err
