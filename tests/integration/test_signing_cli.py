"""Issue 26 through the CLI, as a user runs it (fresh processes), on a local registry and on moto S3:
publish --sign-key, sign, pull --trust, verify --public-key, and OpenSSF's own `model_signing
verify key` accepting a memreg-signed pulled folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import memreg_cli
from conformance.test_signing import make_key  # one key maker for both suites (tests/ is on the path)
from conftest import memreg_in_process as run_cli

pytestmark = pytest.mark.slow  # signs, pulls and verifies through fresh memreg processes, on local and S3


@pytest.fixture(params=["local", "s3"])
def url(request, tmp_path) -> str:
    """Registries that outlive a process (memory:// does not)."""
    u = str(tmp_path / "registry") if request.param == "local" else request.getfixturevalue("s3_url")
    memreg_cli("init", u, check=True)
    return u


@pytest.fixture
def keys(tmp_path) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path / "keys"
    folder.mkdir()
    return {who: make_key(folder, who) for who in ("publisher", "reviewer")}


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """No trust settings leak in from the machine: an empty config folder, no policy."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "config"), "MEMREG_TRUST": "", "MEMREG_PUBLIC_KEYS": "",
            "MEMREG_TRUST_FILE": ""}


def cli(*args: str, env: dict[str, str], check: bool = False) -> subprocess.CompletedProcess:
    return memreg_cli(*args, env=env, check=check)


def envelope(proc: subprocess.CompletedProcess) -> dict:
    """The --json envelope, checked against the published schema of the CLI's output."""
    import jsonschema

    doc = json.loads(proc.stdout)
    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas/json/cli-output.schema.json").read_text())
    jsonschema.validate(doc, schema)
    return doc


def cached_packages(memreg_home: Path) -> list[Path]:
    return list((memreg_home / "cache" / "packages").glob("*/*"))


def test_publish_signed_pull_require_verify_and_model_signing_cli(url, keys, tiny_package, tmp_path, env, memreg_home):
    pub = str(keys["publisher"][1])
    out = cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--sign-key", str(keys["publisher"][0]),
              "--registry", url, "--json", env=env, check=True)
    signed_by = envelope(out)["data"]["signed_by"]
    assert len(signed_by) == 64
    pulled = cli("pull", "law@1.0.0", "--trust", "require", "--public-key", pub, "--registry", url, env=env, check=True)
    folder = Path(pulled.stdout.strip())
    assert (folder / "model.safetensors").is_file() and "warning" not in pulled.stderr

    sigs = tmp_path / "sigs"
    verified = cli("verify", "law@1.0.0", "--public-key", pub, "--save-signatures", str(sigs), "--registry", url,
                   "--json", env=env, check=True)
    doc = envelope(verified)
    assert doc["ok"] and doc["data"]["signed_by"] == [signed_by] and doc["data"]["problems"] == []
    sig, = sigs.glob("*.sig")
    # OpenSSF's own CLI accepts the pulled folder as it is
    ms = [str(Path(sys.executable).with_name("model_signing")), "verify", "key"]
    ok = subprocess.run([*ms, str(folder), "--signature", str(sig), "--public_key", pub], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # ... and refuses a copy with one byte changed, naming the file
    copy = shutil.copytree(folder, tmp_path / "copy")
    cfg = copy / "config.json"
    cfg.chmod(0o644)
    cfg.write_bytes(cfg.read_bytes()[:-1] + b" ")
    bad = subprocess.run([*ms, str(copy), "--signature", str(sig), "--public_key", pub], capture_output=True, text=True)
    assert bad.returncode != 0 and "config.json" in bad.stdout + bad.stderr


def test_unsigned_version_refused_under_require_warned_under_warn(url, keys, tiny_package, env, memreg_home):
    pub = str(keys["publisher"][1])
    cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--registry", url, env=env, check=True)
    refused = cli("pull", "law@1.0.0", "--trust", "require", "--public-key", pub, "--registry", url, env=env)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().count("\n") == 0 and "law@1.0.0 is not signed" in refused.stderr, refused.stderr
    assert cached_packages(memreg_home) == []  # refused before any byte was pulled
    # the same through the environment, and the trust file
    trust_file = Path(env["XDG_CONFIG_HOME"]) / "memreg" / "trusted-keys.pem"
    trust_file.parent.mkdir(parents=True)
    shutil.copy(pub, trust_file)
    assert cli("pull", "law@1.0.0", "--registry", url, env={**env, "MEMREG_TRUST": "require"}).returncode == 1
    warned = cli("pull", "law@1.0.0", "--registry", url, env=env)  # default policy: warn
    assert warned.returncode == 0 and "warning: law@1.0.0 is not signed" in warned.stderr
    assert Path(warned.stdout.strip()).is_dir()
    assert "not signed" not in cli("pull", "law@1.0.0", "--trust", "off", "--registry", url, env=env).stderr
    failed = cli("verify", "law@1.0.0", "--public-key", pub, "--registry", url, env=env)
    assert failed.returncode == 1 and "law@1.0.0: it carries no signature" in failed.stdout


def test_sign_after_the_fact_by_a_reviewer(url, keys, tiny_package, env):
    cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--sign-key", str(keys["publisher"][0]),
        "--registry", url, env=env, check=True)
    reviewer = str(keys["reviewer"][1])
    assert cli("pull", "law@1.0.0", "--trust", "require", "--public-key", reviewer, "--registry", url, env=env).returncode == 1
    out = cli("sign", "law@1.0.0", "--sign-key", str(keys["reviewer"][0]), "--registry", url, "--json", env=env, check=True)
    assert envelope(out)["data"]["signatures"] == 2
    cli("pull", "law@1.0.0", "--trust", "require", "--public-key", reviewer, "--registry", url, env=env, check=True)
    # show says who signed, and which signature a key you trust verifies
    shown = envelope(cli("show", "law@1.0.0", "--registry", url, "--json", check=True,
                         env={**env, "MEMREG_PUBLIC_KEYS": str(keys["publisher"][1])}))["data"]["signatures"]
    assert sorted(s["verified"] for s in shown) == [False, True]
    assert any("which you do not trust" in s["note"] for s in shown) and all(s["signed_at"] for s in shown)
    human = cli("show", "law@1.0.0", "--registry", url, env=env, check=True).stdout
    assert human.count("signed     by ") == 2
    # list --signed-by keeps the versions that key's signature holds for
    cli("publish", str(tiny_package), "--name", "law", "--version", "1.1.0", "--registry", url, env=env, check=True)
    listed = envelope(cli("list", "--all", "--signed-by", reviewer, "--registry", url, "--json", env=env, check=True))
    assert [r["version"] for r in listed["data"]] == ["1.0.0"]
    assert envelope(cli("list", "--all", "--registry", url, "--json", env=env, check=True))["data"][1]["version"] == "1.1.0"


def test_bad_options_say_what_to_do(url, keys, tiny_package, tmp_path, env):
    bad_policy = cli("pull", "law@1.0.0", "--trust", "sometimes", "--registry", url, env=env)
    assert bad_policy.returncode == 2 and "off, warn, require" in bad_policy.stderr
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("hello\n")
    refused = cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--sign-key", str(not_a_key),
                  "--registry", url, env=env)
    assert refused.returncode == 1 and "not an elliptic-curve private key" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "Traceback" not in refused.stderr
    listed = json.loads(cli("list", "--registry", url, "--json", env=env, check=True).stdout)["data"]
    assert listed == []  # nothing was published with an unusable key
    no_key = cli("sign", "law@1.0.0", "--registry", url, env=env)
    assert no_key.returncode == 2 and "--sign-key" in no_key.stderr
    no_ref = cli("verify", "--public-key", str(keys["publisher"][1]), "--registry", url, env=env)
    assert no_ref.returncode == 2 and "checks one version" in no_ref.stderr
    cli("publish", str(tiny_package), "--name", "law", "--version", "1.0.0", "--registry", url, env=env, check=True)
    missing = cli("pull", "law@1.0.0", "--public-key", str(tmp_path / "nope.pub"), "--registry", url, env=env)
    assert missing.returncode == 1 and "cannot read public key file" in missing.stderr


# compose, attach and eval take the same policy, checked before any memory byte is pulled ---------
@pytest.fixture
def law(tmp_path, tiny_package, keys, env, monkeypatch):
    """A local registry with law@1.0.0 signed by the publisher and law@1.1.0 unsigned; no trust
    settings from the machine."""
    from memreg.registry import Registry, signing

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reg = Registry.init(str(tmp_path / "registry"))
    signing.sign(reg, reg.publish(tiny_package, name="law", version="1.0.0").manifest, keys["publisher"][0])
    reg.publish(tiny_package, name="law", version="1.1.0")
    return reg


def test_compose_refuses_an_unsigned_memory_under_require(law, keys, tiny_package, memreg_home):
    import warnings

    from memreg.compose import compose
    from memreg.registry.trust import UntrustedMemoryError

    pub = [keys["publisher"][1]]
    with pytest.raises(UntrustedMemoryError, match="law@1.1.0 is not signed"):
        compose(str(tiny_package), "law@1.1.0", 0.5, registry=law, trust="require", public_keys=pub)
    assert cached_packages(memreg_home) == []  # refused before the memory was pulled
    with pytest.warns(UserWarning, match="law@1.1.0 is not signed by a key you trust"):
        compose(str(tiny_package), "law@1.1.0", 0.5, registry=law, trust="warn", public_keys=pub)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a memory signed by a trusted key passes silently
        composed = compose(str(tiny_package), "law@1.0.0", 0.5, registry=law, trust="require", public_keys=pub)
    assert composed.names == ["law@1.0.0"]


def test_attach_and_eval_take_the_trust_policy(law, keys, tiny_package, tmp_path, monkeypatch, capsys, memreg_home):
    pub, base = str(keys["publisher"][1]), str(tiny_package)
    common = ["--registry", law.url, "--public-key", pub]
    code, out, err = run_cli(monkeypatch, capsys, "attach", base, "law@1.1.0=0.5", "--prompt", "The licence",
                             "--max-new-tokens", "2", "--trust", "require", *common)
    assert code == 1 and out == "" and "law@1.1.0 is not signed" in err and err.strip().count("\n") == 0, err
    assert cached_packages(memreg_home) == []
    code, out, err = run_cli(monkeypatch, capsys, "attach", base, "law@1.0.0=0.5", "--prompt", "The licence",
                             "--max-new-tokens", "2", "--trust", "require", *common)
    assert code == 0 and out.strip() and "warning" not in err, err
    data = tmp_path / "held.txt"
    data.write_text(Path("/usr/share/common-licenses/Apache-2.0").read_text()[:600])
    code, out, err = run_cli(monkeypatch, capsys, "eval", base, "--memory", "law@1.1.0=0.5", "--data", str(data),
                             "--json", *common)  # default policy: warn
    doc = json.loads(out)
    assert code == 0 and any("law@1.1.0 is not signed" in w for w in doc["warnings"]), doc
    code, out, err = run_cli(monkeypatch, capsys, "eval", base, "--memory", "law@1.1.0=0.5", "--data", str(data),
                             "--trust", "require", *common)
    assert code == 1 and "not signed" in err
