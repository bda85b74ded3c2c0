"""Issue 23: a model the CLI downloads from the Hub shows huggingface_hub's download bars on stderr
(none under --json or --quiet). The CLI used to set HF_HUB_DISABLE_PROGRESS_BARS=1 for every
command, and to drop the Hub's bars with transformers' own, so a base downloaded for minutes showed
nothing. The Hub here is a loopback HTTP server speaking the endpoints huggingface_hub calls
(model info, tree, resolve), reached through HF_ENDPOINT by the real client."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)

from conftest import REPO
from tiny_lms import LICENSES, gpt2, real_text, save_package, train_tokenizer

pytestmark = pytest.mark.slow  # downloads over HTTP and trains, in fresh processes

REPO_ID = "acme/tiny-base"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _handler(files: dict[str, Path]) -> type[BaseHTTPRequestHandler]:
    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
            self.send_response(code)
            for k, v in {**(headers or {}), "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _resolve(self, head: bool) -> None:
            name = self.path.split("?")[0].split(f"/{REPO_ID}/resolve/", 1)[1].partition("/")[2]
            if name not in files:
                return self._send(404, headers={"X-Error-Code": "EntryNotFound"}, head=head)
            body = files[name].read_bytes()
            self._send(200, body, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}, head=head)

        def do_HEAD(self) -> None:
            self._resolve(head=True) if f"/{REPO_ID}/resolve/" in self.path else self._send(404, head=True)

        def do_GET(self) -> None:
            if f"/{REPO_ID}/resolve/" in self.path:
                return self._resolve(head=False)
            if self.path.startswith(f"/api/models/{REPO_ID}/tree/"):
                tree = [{"type": "file", "path": f, "size": p.stat().st_size,
                         "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for f, p in files.items()]
                return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
            if self.path.startswith(f"/api/models/{REPO_ID}"):
                info = {"id": REPO_ID, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
            self._send(404)

    return Hub


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    tok = train_tokenizer(real_text(LICENSES))
    folder = save_package(gpt2(len(tok), 0), tok, root / "tiny-base")
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data = root / "held.txt"
    data.write_text(Path(LICENSES[1]).read_text()[:1500])
    corpus = root / "corpus"
    corpus.mkdir()
    for p in LICENSES[:2]:
        (corpus / Path(p).name).write_text(Path(p).read_text())
    yield {"endpoint": f"http://127.0.0.1:{server.server_address[1]}", "data": str(data), "corpus": str(corpus)}
    server.shutdown()


def _memreg(hub, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env.update(HF_ENDPOINT=hub["endpoint"], HF_HUB_CACHE=str(tmp_path / "hf-cache"),
               TQDM_POSITION="-1")  # huggingface_hub draws on a pipe too (tqdm skips non-terminals by default)
    return subprocess.run([sys.executable, "-m", "memreg", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def _commands(hub, tmp_path) -> dict[str, list[str]]:
    return {
        "eval": ["eval", REPO_ID, "--data", hub["data"], "--context", "64"],
        "train": ["train", hub["corpus"], "--teacher", REPO_ID, "--init", REPO_ID, "--out", str(tmp_path / "out"),
                  "--k", "8", "--block-size", "32", "--steps", "1", "--batch-size", "2", "--eval-fraction", "0.1"],
    }


@pytest.mark.parametrize("command, flag", [("eval", None), ("eval", "--json"), ("eval", "--quiet"),
                                           ("train", None), ("train", "--json")])
def test_a_hub_download_shows_its_bars_unless_json_or_quiet(hub, tmp_path, command, flag):
    proc = _memreg(hub, tmp_path, *_commands(hub, tmp_path)[command], *([flag] if flag else []))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "hf-cache").is_dir()  # it did download from the (loopback) Hub
    shown = "model.safetensors: 100%" in proc.stderr
    assert shown is (flag is None), proc.stderr[-3000:]
    if flag == "--json":
        assert json.loads(proc.stdout)["ok"] is True
