"""Issue 23 item 8 and the retries part of item 9: every S3 request has an overall deadline.

A connect or read timeout starts again with every byte, so an endpoint that sends one byte every
second or so kept `memreg list` running past 150 s. Here such an endpoint (127.0.0.1, a bounded loop
that stops itself) meets a 3 s deadline set through the storage option. Nothing is timed: the
subprocess guard only turns a hang into a failure.
"""

from __future__ import annotations

import socket
import threading

import pytest

from conftest import memreg_cli
from memreg.registry import Registry
from memreg.registry.errors import InvalidArgumentError, StoreError
from memreg.registry.store import open_store

pytestmark = pytest.mark.slow  # waits out real deadlines of seconds on endpoints that trickle

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: 2\r\n\r\n{}"


@pytest.fixture
def trickling_endpoint():
    """Answers every request one byte per second, for at most 40 bytes, then hangs up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    stop, threads = threading.Event(), []

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(1.0)
            try:
                conn.recv(65536)  # the request's head (its body, if any, is never read)
                for byte in ANSWER[:40]:
                    if stop.wait(1.0):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except OSError:
                continue
            threads.append(threading.Thread(target=trickle, args=(conn,), daemon=True))
            threads[-1].start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    acceptor.join()
    for t in threads:
        t.join()
    server.close()


def test_a_trickling_endpoint_ends_list_at_the_deadline(trickling_endpoint):
    proc = memreg_cli("list", "--registry", "s3://bucket/reg", "-o", f"endpoint_url={trickling_endpoint}",
                      "-o", "deadline=3", env=S3_ENV, timeout=120)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert trickling_endpoint in lines[0] and "within its 3 s deadline" in lines[0] and "-o deadline=" in lines[0]


def test_blob_transfers_end_at_the_deadline(trickling_endpoint, tmp_path, monkeypatch):
    """s3fs moves blobs: its requests, and the body it streams back, have the deadline too."""
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    store = open_store("s3://bucket/reg", {"client_kwargs": {"endpoint_url": trickling_endpoint}, "deadline": 2})
    local = tmp_path / "blob"
    local.write_bytes(b"x" * 1000)
    with pytest.raises(StoreError, match=f"{trickling_endpoint}.*within its 2 s deadline"):
        store.get_file("blobs/sha256/ab/cd", tmp_path / "got")
    with pytest.raises(StoreError, match="within its 2 s deadline"):
        store.put_file("blobs/sha256/ab/ef", local)


@pytest.mark.parametrize("option", ["retries=0", "retries=-1", "retries=1.5", "retries=\u0663", "deadline=0",
                                    "deadline=nan", "deadline=soon"])
def test_out_of_range_limits_are_one_line_usage_errors(s3_url, option):
    """retries=0 left s3fs's retry loop without a single try, which ended every blob transfer with
    `TypeError: exceptions must derive from BaseException`."""
    key, _, value = option.partition("=")
    with pytest.raises(InvalidArgumentError, match=f"storage option {key}=.* is not allowed: {key} is "):
        Registry.open(s3_url, storage_options={key: value})
    proc = memreg_cli("list", "--registry", s3_url, "-o", option)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{key} is " in proc.stderr, proc.stderr


def test_one_try_is_allowed_and_pulls(s3_url, tiny_package):
    Registry.init(s3_url).publish(tiny_package, name="law", version="1.0.0")
    reg = Registry.open(s3_url, storage_options={"retries": 1, "deadline": 30})
    assert reg.store.fs.retries == 1 and reg.store.deadline == 30
    assert (reg.pull("law") / "config.json").is_file()
