"""Shared fixtures: an isolated $MEMREG_HOME for every test, a tiny real package, a moto S3 server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from licences import licence_texts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def memreg_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("memreg-home")
    monkeypatch.setenv("MEMREG_HOME", str(home))
    monkeypatch.delenv("MEMREG_REGISTRY", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer trained on Debian's licence texts, saved as a HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(licence_texts(), trainer=trainer)
    out = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(out)
    return out


def make_package(dest: Path, tokenizer_dir: Path, *, seed: int = 0, n_embd: int = 32) -> Path:
    """A real (tiny, random) GPT-2 saved as a Hugging Face folder with safetensors + tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=n_embd, n_layer=1, n_head=2,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    return make_package(tmp_path_factory.mktemp("pkg") / "law-memory", tiny_tokenizer_dir)


@pytest.fixture
def package_copy(tmp_path, tiny_package) -> Path:
    dest = tmp_path / "package"
    shutil.copytree(tiny_package, dest)
    return dest


# --- S3: moto's real HTTP server on loopback, reached through s3fs ---------------------------
def _make_moto_writes_atomic() -> None:
    """moto checks If-Match / If-None-Match and then writes, with no lock in between, and its server
    answers requests on several threads: two concurrent conditional PUTs can both pass the check, a
    lost update that real S3 (which evaluates the condition atomically with the write) never allows.
    The registry's compare-and-swap relies on that atomicity, so the emulator must provide it: every
    object write (PUT, copy, DELETE, multipart POST) runs under one lock, in the order S3 would admit
    them one by one."""
    import functools
    import threading

    from moto.s3.responses import S3Response

    if getattr(S3Response, "_memreg_atomic", False):
        return
    lock = threading.RLock()
    for name in ("put_object", "copy_object", "delete_object", "_key_response_post"):
        original = getattr(S3Response, name)

        @functools.wraps(original)
        def locked(self, *args, _original=original, **kwargs):
            with lock:
                return _original(self, *args, **kwargs)

        setattr(S3Response, name, locked)
    S3Response._memreg_atomic = True


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    _make_moto_writes_atomic()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_server, monkeypatch) -> dict[str, str]:
    """AWS settings the standard way, for this process and its subprocesses."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_server,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


@pytest.fixture
def s3_url(s3_env) -> str:
    import boto3

    bucket = f"memreg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/team-registry"


@pytest.fixture(params=["local", "memory", "s3"])
def registry_url(request, tmp_path) -> str:
    """One registry per backend; conformance tests run on each."""
    if request.param == "local":
        return str(tmp_path / "registry")
    if request.param == "memory":
        return f"memory://memreg-{uuid.uuid4().hex[:12]}"
    return request.getfixturevalue("s3_url")


def memreg_cli(*args: str, env: dict[str, str] | None = None, check: bool = False,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m memreg ARGS` in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "memreg", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"memreg {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def memreg_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `memreg ARGS` in this process (torch is imported once per test module, not per command):
    (exit code, stdout, stderr)."""
    from memreg.cli.main import run

    monkeypatch.setattr(sys, "argv", ["memreg", *args])
    try:
        run()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert that a `memreg_cli` run failed the way every memreg error fails: a non-zero exit and one
    line on stderr, "error: ..." naming each of `needles`. Returns that line."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], proc.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def law_and_code(registry_url, tiny_package):
    """A registry with law@1.0.0, law@1.1.0 and code@0.1.0 published in that order (index/catalog tests)."""
    from memreg.registry import Registry
    from memreg.schemas import DomainMetadata

    reg = Registry.init(registry_url)
    reg.publish(tiny_package, name="law", version="1.0.0", description="first", domain=DomainMetadata(labels=["law"]))
    reg.publish(tiny_package, name="law", version="1.1.0", description="second", domain=DomainMetadata(labels=["law"]))
    reg.publish(tiny_package, name="code", version="0.1.0", description="code", domain=DomainMetadata(labels=["code"]))
    return reg


# --- the inner loop: `python -m pytest -m "not slow"` (docs/testing.md) ----------------------------
# Slow tests carry the marker in their own file (`pytestmark` or a decorator, with the reason beside
# it), except one kind, marked here by rule rather than in each of the many files that use the
# fixtures: every test that talks to S3 (an `s3` parameter or the moto server). moto's HTTP server
# answers each request through a real HTTP round trip, several times slower than the local and
# memory backends, which the inner loop keeps.
def _uses_s3(item: pytest.Item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "s3" in params.values() or "moto_server" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _uses_s3(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def tok():
    """A BPE tokenizer trained on Debian's licence texts, for tests/tiny_lms.py's models.

    Module-scoped, not session-scoped: a test may set its padding side."""
    from tiny_lms import LICENSES, real_text, train_tokenizer

    return train_tokenizer(real_text(LICENSES))
