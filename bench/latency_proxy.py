"""A TCP proxy on 127.0.0.1 that delays every HTTP request and counts them (stdlib only, threads).

    proxy = start("127.0.0.1", moto_port, delay_s=0.020)
    ... point the client at http://127.0.0.1:{proxy.port} ...
    proxy.requests.value      # HTTP requests forwarded so far; proxy.requests.reset() zeroes it
    proxy.stop()

Each accepted connection gets its own connection to the target and two threads. Server -> client is
a plain byte pump. Client -> server is parsed just enough to find where each request ends on a
keep-alive connection: the request line and headers, then a body framed by `Transfer-Encoding:
chunked` (aws-chunked content inside HTTP chunks, as aiobotocore sends it, is framed by the outer
chunks) or by `Content-Length` (which also frames aws-chunked bodies sent with a length), else none.
Each request's head is held for `delay_s` before it is forwarded, once per request (the body then
streams without further delay, so `Expect: 100-continue` works); parallel connections are delayed in
parallel, like a network with that much one-way latency and ample bandwidth. Bytes on a connection
that cannot be parsed as HTTP/1.x requests are forwarded untouched and counted in `.unparsed`.

`python bench/latency_proxy.py` runs `self_check` against a fresh moto server.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

MAX_HEAD = 1 << 20  # a request head larger than this is not HTTP we understand


class RequestCounter:
    """Thread-safe count of forwarded requests, with the request lines seen since the last reset."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0
        self._lines: list[tuple[str, str]] = []
        self._server_s = 0.0

    def add_server_time(self, seconds: float) -> None:
        with self._lock:
            self._server_s += seconds

    @property
    def server_seconds(self) -> float:
        """Summed over the requests since the last reset: from a request's last byte forwarded to the
        first byte of its answer, i.e. the server's own time (no injected delay in it)."""
        with self._lock:
            return self._server_s

    def add(self, method: str, target: str) -> None:
        with self._lock:
            self._n += 1
            self._lines.append((method, target))

    @property
    def value(self) -> int:
        with self._lock:
            return self._n

    def lines(self) -> list[tuple[str, str]]:
        """(method, request-target) of every request counted since the last reset, in order."""
        with self._lock:
            return list(self._lines)

    def reset(self) -> int:
        """Zero the counter; returns the count it had."""
        with self._lock:
            n, self._n, self._lines, self._server_s = self._n, 0, [], 0.0
            return n

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"RequestCounter({self.value})"


class _Unparsable(Exception):
    pass


class _Reader:
    """Buffered reads from the client socket; everything read is forwarded by the caller."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def fill(self) -> bool:
        data = self.sock.recv(1 << 16)
        if not data:
            return False
        self.buf += data
        return True

    def take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def line(self) -> bytes:
        """Up to and including the next CRLF (EOFError if the client closes first)."""
        while (i := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise _Unparsable("line too long")
            if not self.fill():
                raise EOFError
        return self.take(i + 2)


@dataclass
class Proxy:
    target: tuple[str, int]
    delay_s: float
    requests: RequestCounter = field(default_factory=RequestCounter)
    unparsed: int = 0  # connections whose bytes could not be parsed as requests (forwarded raw)
    port: int = 0
    _listener: socket.socket | None = None
    _socks: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._socks.update(socks)

    def _connection(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stalls on small writes
        self._track(client, upstream)
        sent: deque[float] = deque()  # when each request was fully forwarded, awaiting its answer

        def answered() -> None:
            if sent:
                self.requests.add_server_time(time.perf_counter() - sent.popleft())

        back = threading.Thread(target=_pump, args=(upstream, client, answered), daemon=True)
        back.start()
        try:
            self._requests(client, upstream, sent)
        except (OSError, EOFError):
            pass
        finally:
            _half_close(upstream)
            back.join()
            for s in (client, upstream):
                s.close()
            with self._lock:
                self._socks.difference_update((client, upstream))

    def _requests(self, client: socket.socket, upstream: socket.socket, sent: deque[float]) -> None:
        r = _Reader(client)
        while True:
            try:
                self._one_request(r, upstream)
                sent.append(time.perf_counter())
            except _Unparsable:
                self.unparsed += 1
                upstream.sendall(r.take(len(r.buf)))
                _pump(client, upstream)
                return

    def _one_request(self, r: _Reader, upstream: socket.socket) -> None:
        while r.buf[:2] == b"\r\n" or not r.buf:  # stray CRLFs between requests are allowed
            if r.buf[:2] == b"\r\n":
                del r.buf[:2]
            elif not r.fill():
                raise EOFError
        while (end := r.buf.find(b"\r\n\r\n")) < 0:
            if len(r.buf) > MAX_HEAD:
                raise _Unparsable("head too long")
            if not r.fill():
                raise EOFError
        head = r.take(end + 4)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            r.buf[:0] = head
            raise _Unparsable(lines[0][:80])
        headers: dict[str, str] = {}
        for h in lines[1:]:
            if h:
                k, _, v = h.partition(":")
                k = k.strip().lower()
                headers[k] = f"{headers[k]},{v.strip()}" if k in headers else v.strip()
        self.requests.add(parts[0], parts[1])
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        upstream.sendall(head)
        codings = [c.strip().lower() for c in headers.get("transfer-encoding", "").split(",") if c.strip()]
        if codings and codings[-1] == "chunked":
            _forward_chunked(r, upstream)
        elif "content-length" in headers:
            try:
                n = int(headers["content-length"].split(",")[0])
            except ValueError:
                raise _Unparsable("bad Content-Length") from None
            _forward_exact(r, upstream, n)

    def stop(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _forward_exact(r: _Reader, upstream: socket.socket, n: int) -> None:
    while n > 0:
        if not r.buf and not r.fill():
            raise EOFError
        chunk = r.take(min(n, len(r.buf)))
        upstream.sendall(chunk)
        n -= len(chunk)


def _forward_chunked(r: _Reader, upstream: socket.socket) -> None:
    while True:
        size_line = r.line()
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)  # chunk extensions (;chunk-signature=…) ignored
        except ValueError:
            raise _Unparsable("bad chunk size") from None
        upstream.sendall(size_line)
        if size == 0:
            while (trailer := r.line()) != b"\r\n":  # trailer fields (x-amz-checksum-…), then the empty line
                upstream.sendall(trailer)
            upstream.sendall(trailer)
            return
        _forward_exact(r, upstream, size + 2)  # data and its CRLF


def _pump(src: socket.socket, dst: socket.socket, on_data=None) -> None:
    try:
        while data := src.recv(1 << 16):
            if on_data is not None:
                on_data()  # the first bytes of an answer (later chunks find nothing awaiting)
            dst.sendall(data)
    except OSError:
        pass
    _half_close(dst)


def _half_close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def start(target_host: str, target_port: int, delay_s: float = 0.020) -> Proxy:
    """A running proxy on 127.0.0.1:<proxy.port> in front of target_host:target_port."""
    p = Proxy(target=(target_host, target_port), delay_s=delay_s)
    p._serve()
    threading.Thread(target=p._accept_loop, daemon=True).start()
    return p


def self_check(target_host: str, target_port: int, bucket: str, delay_s: float = 0.020) -> dict:
    """Assert the counter against sequences whose request count is known; returns what it saw.

    Needs an S3 endpoint (moto) at target with `bucket` existing and AWS credentials in the environment.
    """
    import http.client

    import boto3
    from botocore.config import Config

    p = start(target_host, target_port, delay_s)
    try:
        s3 = boto3.client("s3", endpoint_url=p.url, config=Config(retries={"max_attempts": 1}))
        fake = b"GET /not-a-request HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        # 1 request whose Content-Length body is full of request lines
        s3.put_object(Bucket=bucket, Key="selfcheck/obj", Body=fake * 50)
        assert p.requests.reset() == 1, "a put_object body was miscounted"
        t = time.perf_counter()
        for _ in range(3):
            s3.head_object(Bucket=bucket, Key="selfcheck/obj")
        took = time.perf_counter() - t
        assert p.requests.reset() == 3, "3 head_object must count 3"
        assert took >= 3 * delay_s, f"3 delayed requests took {took:.3f}s < {3 * delay_s:.3f}s"
        # 2 requests on one keep-alive connection: a chunked PUT (aws-chunked framing and fake request
        # lines inside the HTTP chunks), then a GET of what it stored
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        data = [b"5;chunk-signature=00\r\nhello\r\n", fake, b"0\r\n\r\n"]
        conn.putrequest("PUT", f"/{bucket}/selfcheck/chunked", skip_accept_encoding=True)
        for k, v in _signed(p.url, "PUT", f"/{bucket}/selfcheck/chunked").items():
            conn.putheader(k, v)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for c in data:
            conn.send(b"%x\r\n%s\r\n" % (len(c), c))
        conn.send(b"0\r\n\r\n")  # (moto's werkzeug refuses trailer fields; _check_trailer covers them)
        put = conn.getresponse()
        put.read()
        conn.request("GET", f"/{bucket}/selfcheck/chunked", headers=_signed(p.url, "GET", f"/{bucket}/selfcheck/chunked"))
        got = conn.getresponse()
        body = got.read()
        conn.close()
        lines = p.requests.lines()
        assert p.requests.reset() == 2, f"a chunked PUT then a GET must count 2, saw {lines}"
        assert (put.status, got.status) == (200, 200) and body == b"".join(data), \
            f"the chunked body did not arrive intact ({put.status}, {got.status}, {body[:60]!r})"
        _check_trailer()
        assert p.unparsed == 0
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "selfcheck/obj"}, {"Key": "selfcheck/chunked"}]})
        return {"ok": True, "three_heads_seconds": took}
    finally:
        p.stop()


def _signed(base: str, method: str, path: str) -> dict[str, str]:
    """SigV4 headers for a raw request (moto refuses anonymous ones), payload unsigned."""
    import boto3
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    req = AWSRequest(method=method, url=base + path, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    S3SigV4Auth(boto3.Session().get_credentials(), "s3", "us-east-1").add_auth(req)
    return {k: v for k, v in req.headers.items() if k.lower() != "host"}


def _check_trailer() -> None:
    """A chunked body with extensions and trailer fields is forwarded whole, and the next request's
    bytes after it are left for the next request."""
    a, b = socket.socketpair()
    up_r, up_w = socket.socketpair()
    body = b"4;chunk-signature=ab\r\nwxyz\r\n0;chunk-signature=cd\r\nx-amz-checksum-crc32: AAAAAA==\r\n\r\n"
    nxt = b"GET /next HTTP/1.1\r\n\r\n"
    a.sendall(body + nxt)
    r = _Reader(b)
    _forward_chunked(r, up_w)
    up_w.close()
    forwarded = b"".join(iter(lambda: up_r.recv(1 << 16), b""))
    rest = bytes(r.buf)
    while len(rest) < len(nxt):
        rest += b.recv(1 << 16)
    assert forwarded == body and rest == nxt, (forwarded, rest)
    for s in (a, b, up_r):
        s.close()


if __name__ == "__main__":
    import logging
    import os

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="selfcheck")
    print(self_check(host, port, "selfcheck"))
    server.stop()
