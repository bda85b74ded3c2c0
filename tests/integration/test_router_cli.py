"""A router through the CLI, on tiny real models and a local registry: `memreg tune --router --write`
ships it inside a new version (router/ files, metrics.router in the manifest); that version pulls,
verifies and attaches with the router (eval reports the routed perplexity, --no-router opts out);
a router fitted for another base is refused (--router FOLDER: an error; the package's own: not used,
with a warning, the memory still applies at its fixed weight)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_lms import LICENSES, gpt2, llama, real_text, save_package, train_tokenizer
from conftest import memreg_in_process as memreg

pytestmark = pytest.mark.slow  # fits a router and composes several times (~30 s here)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("router")
    tok = train_tokenizer(real_text(LICENSES))
    v = len(tok)
    base = save_package(gpt2(v, 0), tok, root / "base")
    wide = save_package(gpt2(v, 3, width=48), tok, root / "wide-base")  # same tokenizer, another hidden size
    mem = save_package(llama(v, 1, rows=v + 3), tok, root / "law", recommended_weight=0.3, name="law")
    data = root / "val.txt"
    data.write_text(Path(LICENSES[1]).read_text()[:2400])
    held = root / "held.txt"
    held.write_text(Path(LICENSES[2]).read_text()[:1200])
    from memreg.registry import Registry

    Registry.init(str(root / "registry")).publish(mem)
    return {"root": root, "base": str(base), "wide": str(wide), "mem": str(mem), "data": str(data),
            "held": str(held), "registry": str(root / "registry")}


def test_tune_router_publishes_pulls_verifies_and_attaches(world, monkeypatch, capsys):
    reg_url = world["registry"]
    code, out, err = memreg(monkeypatch, capsys, "tune", world["base"], "law@1.0.0", "--registry", reg_url,
                            "--data", world["data"], "--held-out", world["held"], "--context", "64", "--stride", "32",
                            "--router", "--write", "1.1.0", "--json")
    assert code == 0, err
    res = json.loads(out)["data"]
    r = res["router"]
    assert r["features"] == ["entropy", "top1", "agreement"] and r["held_out_tokens"] > 0
    assert r["gain"] == pytest.approx(r["perplexity_fixed"] / r["perplexity_router"])

    from memreg.registry import Registry

    reg = Registry.open(reg_url)
    manifest = reg.resolve("law@1.1.0")
    rec = manifest.metrics.router
    assert rec is not None and rec.base == world["base"] and rec.gain == pytest.approx(r["gain"])
    assert {"router/router_config.json", "router/router.safetensors"} <= {f.path for f in manifest.model.files}
    assert reg.resolve("law@1.0.0").metrics.router is None

    code, out, err = memreg(monkeypatch, capsys, "verify", "law@1.1.0", "--registry", reg_url)
    assert code == 0, err
    folder = reg.pull("law@1.1.0")
    config = json.loads((Path(folder) / "router" / "router_config.json").read_text())
    assert config["base"]["hidden_size"] == 32 and config["fit"]["held_out_tokens"] == r["held_out_tokens"]

    # attach: the package's router is used; its perplexity is the SDK's, measured the same way
    args = ["attach", world["base"], "law@1.1.0", "--registry", reg_url, "--eval", world["held"], "--context", "64",
            "--stride", "32", "--json"]
    code, out, err = memreg(monkeypatch, capsys, *args)
    assert code == 0, err
    row = json.loads(out)["data"]
    assert row["router"] is True and row["perplexity_router"] == pytest.approx(r["perplexity_router"], rel=1e-9)
    code, out, err = memreg(monkeypatch, capsys, *args, "--no-router")
    assert code == 0, err
    assert "router" not in json.loads(out)["data"] and "perplexity_router" not in json.loads(out)["data"]
    code, out, err = memreg(monkeypatch, capsys, "attach", world["base"], "law@1.1.0", "--registry", reg_url,
                            "--prompt", "Everyone is permitted", "--max-new-tokens", "5", "--json")
    assert code == 0, err
    assert json.loads(out)["data"]["router"] is True

    # another base (same tokenizer, another hidden size): the package's router is not used, with a warning ...
    code, out, err = memreg(monkeypatch, capsys, "eval", world["wide"], "--memory", "law@1.1.0", "--registry", reg_url,
                            "--data", world["held"], "--context", "64", "--stride", "32", "--json")
    assert code == 0, err
    env = json.loads(out)
    assert "perplexity_router" not in env["data"] and env["data"]["perplexity_composed"] > 0
    assert any("is not used" in w and "hidden size 32" in w for w in env["warnings"])
    # ... and named explicitly, it is refused before any scoring
    code, out, err = memreg(monkeypatch, capsys, "eval", world["wide"], "--memory", world["mem"], "--data", world["held"],
                            "--router", str(Path(folder) / "router"))
    assert code == 1
    assert "fitted for a base with hidden size 32; this base's is 48" in err and len(err.strip().splitlines()) == 1


def test_router_options_need_router(world, monkeypatch, capsys):
    code, _, err = memreg(monkeypatch, capsys, "tune", world["base"], world["mem"], "--data", world["data"],
                          "--held-out", world["held"])
    assert code == 2 and "go with --router" in err
    code, _, err = memreg(monkeypatch, capsys, "eval", world["base"], "--memory", world["mem"], "--data", world["data"],
                          "--no-router", "--router", world["root"])
    assert code == 2 and "do not go together" in err
