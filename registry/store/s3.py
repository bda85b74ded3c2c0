"""s3:// as a Store.

Two clients over the same storage options, each where it is best:
  * the registry's small documents (manifests, indexes, tags, listings, conditional writes) go
    through one botocore client, synchronously, several at once on threads. A command that reads
    only documents (`list`, `show`, a cached `pull`) never imports s3fs, aiobotocore or aiohttp:
    that import alone cost 0.35-0.9 s per process here, more than all of `list`'s requests;
  * blobs (multipart uploads, streamed downloads with progress) go through s3fs, built on first use.
Exclusive create and compare-and-swap are S3 conditional writes (If-None-Match: * and If-Match:
<etag>), atomic on the server; a blob's content is checked by its ETag instead of downloading it
again; and every backend error leaves here as one actionable StoreError or the builtin the registry
expects (FileNotFoundError, FileExistsError, ConcurrentUpdateError).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from memreg.core.errors import ConcurrentUpdateError, InvalidArgumentError, StoreError
from memreg.registry.store.base import Store
from memreg.registry.store.generic import FsspecTransfers

# A silent endpoint must fail in bounded time: at most S3_RETRIES x S3_ATTEMPTS x read timeout
# (2 x 2 x 15 s = 60 s) plus s3fs's short back-off, instead of s3fs's and botocore's defaults
# (5 x 5 x 15 s, measured 415 s). Any of them can be overridden with --storage-option. The document
# client has no outer loop: it gets S3_RETRIES x S3_ATTEMPTS botocore attempts, the same bound.
S3_CONNECT_TIMEOUT = 5
S3_READ_TIMEOUT = 15
S3_RETRIES = 2  # s3fs's own retry loop
S3_ATTEMPTS = 2  # botocore's attempts per s3fs try
# An endpoint that sends a byte every few seconds resets every connect and read timeout, so each
# request also has an overall deadline, its retries included (-o deadline=SECONDS): a document
# request ends within S3_DEADLINE; a blob request gets one more second per MIN_RATE bytes it carries.
S3_DEADLINE = 60
MIN_RATE = 64 * 2**10  # bytes per second
READ_THREADS = 16  # documents read at once (read_many), and the client's connection pool

# s3fs options that only shape its transfers: the document client has nothing to do with them
_TRANSFER_ONLY = frozenset({"default_block_size", "default_fill_cache", "default_cache_type", "version_aware",
                            "cache_regions", "max_concurrency", "fixed_upload_size", "local_expiry_check",
                            "use_listings_cache", "listings_expiry_time", "max_paths", "skip_instance_cache",
                            "asynchronous", "loop"})
_CLIENT_OPTIONS = frozenset({"anon", "endpoint_url", "key", "secret", "token", "username", "password", "use_ssl",
                             "client_kwargs", "config_kwargs", "requester_pays", "s3_additional_kwargs", "profile"})


def s3_defaults(opts: dict[str, Any]) -> dict[str, Any]:
    opts = dict(opts)
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("connect_timeout", S3_CONNECT_TIMEOUT)
    config.setdefault("read_timeout", S3_READ_TIMEOUT)
    config.setdefault("retries", {"total_max_attempts": S3_ATTEMPTS, "mode": "standard"})
    opts["config_kwargs"] = config
    return opts


def pop_limits(opts: dict[str, Any]) -> tuple[int, float]:
    """Take memreg's own S3 options out of `opts`: (retries, deadline), each checked. Refused in
    one line: retries=0 left s3fs's retry loop with no try and no error to raise (a TypeError)."""
    retries = _number(opts.pop("retries", S3_RETRIES), "retries", whole=True,
                      rule="the number of tries of each S3 request, a whole number from 1 (no retry), e.g. retries=2")
    deadline = _number(opts.pop("deadline", S3_DEADLINE), "deadline", whole=False,
                       rule=f"the seconds a request may take in all, a number above 0, e.g. deadline={S3_DEADLINE}")
    return int(retries), float(deadline)


def check_limits(opts: dict[str, Any]) -> None:
    """Refuse bad `retries` / `deadline` storage options before anything is opened (the CLI's check)."""
    pop_limits(dict(opts))


def open_s3(url: str, storage_options: dict[str, Any]) -> S3Store:
    """The S3Store of an s3:// (or s3a://) URL; memreg's own options (retries, deadline) are taken out
    of `storage_options` here, since neither botocore nor s3fs takes them."""
    opts = s3_defaults(storage_options)
    retries, deadline = pop_limits(opts)
    return S3Store(url.split("://", 1)[1], url, opts, retries, deadline)


def _number(value: Any, key: str, *, whole: bool, rule: str) -> float:
    """An option's value as a number: a JSON number, or a string of one in ASCII (float() and int()
    would also read '\u0663' as 3)."""
    if isinstance(value, str) and value.isascii():
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value <= 0 or (whole and (value < 1 or value != int(value))):
        raise InvalidArgumentError(f"storage option {key}={value!r} is not allowed: {key} is {rule}")
    return value


def document_client(opts: dict[str, Any], retries: int = S3_RETRIES) -> Any:
    """A botocore S3 client configured by the same storage options s3fs takes (credentials, profile,
    anon, endpoint, client_kwargs, config_kwargs, use_ssl); `retries` multiplies botocore's attempts
    where the options did not set them (s3fs would loop that many times around them)."""
    import botocore.session
    from botocore.config import Config

    unknown = set(opts) - _CLIENT_OPTIONS - _TRANSFER_ONLY
    if unknown:
        raise StoreError(f"unknown S3 storage option(s) {', '.join(sorted(unknown))}: memreg understands "
                         f"{', '.join(sorted(_CLIENT_OPTIONS | {'retries'}))} and s3fs's transfer options")
    config = dict(opts.get("config_kwargs") or {})
    given = config.get("retries") or {}
    if given == {"total_max_attempts": S3_ATTEMPTS, "mode": "standard"}:  # s3_defaults' value: add the outer loop
        config["retries"] = {"total_max_attempts": S3_ATTEMPTS * max(1, retries), "mode": "standard"}
    config.setdefault("max_pool_connections", READ_THREADS)
    client_kwargs = dict(opts.get("client_kwargs") or {})
    init = {"aws_access_key_id": opts.get("key") or opts.get("username"),
            "aws_secret_access_key": opts.get("secret") or opts.get("password"),
            "aws_session_token": opts.get("token"), "endpoint_url": opts.get("endpoint_url")}
    init = {k: v for k, v in init.items() if v is not None and k not in client_kwargs}
    client_kwargs.setdefault("use_ssl", opts.get("use_ssl", True))
    if opts.get("anon"):
        from botocore import UNSIGNED

        config["signature_version"] = UNSIGNED
        init = {k: v for k, v in init.items() if not k.startswith("aws_")}
        client_kwargs = {k: v for k, v in client_kwargs.items() if not k.startswith("aws_")}
    session = botocore.session.Session(profile=opts.get("profile"))
    try:
        return session.create_client("s3", config=Config(**config), **init, **client_kwargs)
    except Exception as e:  # noqa: BLE001 - a bad option or profile: one line naming it
        raise StoreError(f"cannot set up an S3 client from the storage options ({type(e).__name__}: {e})") from e


class S3Store(FsspecTransfers, Store):
    """s3://: documents through botocore (`client`), blobs through s3fs (`fs`, FsspecTransfers), each built
    on first use."""

    read_threads = READ_THREADS  # read_many: one GET per key, this many at once (botocore clients are thread-safe)

    def __init__(self, root: str, url: str, opts: dict[str, Any], retries: int = S3_RETRIES,
                 deadline: float = S3_DEADLINE) -> None:
        super().__init__(root, url)
        self._opts, self._retries, self.deadline = opts, retries, deadline
        self._lock = threading.Lock()
        self._client: Any = None
        self._fs: Any = None

    @property
    def client(self) -> Any:
        """The botocore client for documents and listings (thread-safe; built once)."""
        with self._lock:
            if self._client is None:
                self._client = document_client(self._opts, self._retries)
                extra = dict(self._opts.get("s3_additional_kwargs") or {})
                if self._opts.get("requester_pays"):
                    extra["RequestPayer"] = "requester"
                self._extra = extra
            return self._client

    @property
    def fs(self) -> Any:
        """s3fs, for blob transfers only (its import costs more than a whole `list`)."""
        with self._lock:
            if self._fs is None:
                self._fs = _deadline_s3fs()(deadline=self.deadline, registry_url=self.url, **self._opts)
                self._fs.retries = self._retries  # s3fs's retry loop is an attribute, not an option
            return self._fs

    def _bucket_key(self, key: str) -> tuple[str, str]:
        bucket, _, path = self._path(key).partition("/")
        return bucket, path

    def _call(self, method: str, key: str | None = None, *, then: Any = None, **params: Any) -> Any:
        """One S3 request on the document client, and `then(response)` (reading its body), within
        the deadline: a missing key is FileNotFoundError, a failed condition stays botocore's
        ClientError (create and swap decide what it means), anything else leaves as one actionable
        StoreError."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client
        if key is not None:
            params["Bucket"], params["Key"] = self._bucket_key(key)
        members = client.meta.service_model.operation_model(_OPERATIONS[method]).input_shape.members
        params = {k: v for k, v in self._extra.items() if k in members} | params  # s3fs's rule: where it applies

        def request() -> Any:
            response = getattr(client, method)(**params)
            return then(response) if then else response

        try:
            return self._in_time(request, key or params.get("Prefix") or method)
        except ClientError as e:
            if is_precondition_failure(e):
                raise
            if _status(e) == 404 or _code(e) in ("NoSuchKey", "NotFound", "NoSuchBucket"):
                raise FileNotFoundError(errno.ENOENT, f"not found in {self.url}", key or params.get("Prefix")) from e
            raise self._unreachable(e) from e
        except BotoCoreError as e:
            raise self._unreachable(e) from e

    def _in_time(self, request: Any, what: str) -> Any:
        """`request()`'s result or exception, or a StoreError once the deadline has passed. botocore
        cannot be interrupted mid-read, so the request runs on a daemon thread that is left behind
        (it ends when the endpoint does; it never keeps the process alive)."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = request()
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread as is
                box["error"] = e

        worker = threading.Thread(target=run, name=f"memreg-s3 {what}", daemon=True)
        worker.start()
        worker.join(self.deadline)
        if worker.is_alive():
            raise self._overdue(what, self.deadline)
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _overdue(self, what: str, seconds: float) -> StoreError:
        return overdue(self._client.meta.endpoint_url if self._client is not None else "AWS S3", self.url, what, seconds)

    # reads -------------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        return self.read_with_etag(key)[0]

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        def body(resp: dict) -> tuple[bytes, str]:
            try:
                return resp["Body"].read(), resp["ETag"]
            except Exception as e:  # noqa: BLE001 - a connection dropped mid-body
                raise self._unreachable(e) from e

        return self._call("get_object", key, then=body)

    def size(self, key: str) -> int:
        return int(self._call("head_object", key)["ContentLength"])

    def modified(self, key: str) -> datetime:
        return self._call("head_object", key)["LastModified"]

    def _pages(self, prefix: str, **params: Any) -> Iterator[dict]:
        """The ListObjectsV2 pages below prefix/ (1,000 keys each)."""
        bucket, path = self._bucket_key(prefix)
        path = path.rstrip("/") + "/" if path.rstrip("/") else ""
        token: dict[str, str] = {}
        while True:
            page = self._call("list_objects_v2", Bucket=bucket, Prefix=path, **params, **token)
            yield page
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _rel(self, s3_key: str) -> str:
        return s3_key[len(self._bucket_key("")[1]):]  # strip the registry's folder inside the bucket

    def list(self, prefix: str) -> list[str]:
        return sorted(self._rel(o["Key"]) for page in self._pages(prefix) for o in page.get("Contents", [])
                      if not o["Key"].endswith("/"))

    def children(self, prefix: str) -> list[str]:
        """One delimiter listing per 1,000 folders, whatever is below them."""
        return sorted(p["Prefix"].rstrip("/").rsplit("/", 1)[-1]
                      for page in self._pages(prefix, Delimiter="/") for p in page.get("CommonPrefixes", []))

    def etags(self, prefix: str) -> dict[str, str]:
        """One ListObjectsV2 page per 1,000 keys: each key with the ETag a GET of it reports."""
        return {self._rel(o["Key"]): o["ETag"] for page in self._pages(prefix) for o in page.get("Contents", [])}

    def etag_of(self, data: bytes) -> str:
        return f'"{hashlib.md5(data).hexdigest()}"'  # S3's ETag of a single-part upload  # noqa: S324

    # writes ------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("put_object", key, Body=data)

    def create(self, key: str, data: bytes) -> None:
        from botocore.exceptions import ClientError

        try:
            self._call("put_object", key, Body=data, IfNoneMatch="*")
        except ClientError as e:  # only a failed condition gets here (_call)
            raise FileExistsError(errno.EEXIST, "already exists", key) from e

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        from botocore.exceptions import ClientError

        cond = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            self._call("put_object", key, Body=data, **cond)
        except (ClientError, FileNotFoundError) as e:  # a failed condition, or the key deleted meanwhile
            raise ConcurrentUpdateError(f"{key} changed while it was being updated") from e

    def delete(self, key: str) -> None:
        self._call("delete_object", key)  # S3 answers 204 whether or not the key existed

    def _unreachable(self, e: Exception) -> Exception:
        """Refusals, missing credentials and timeouts as a StoreError naming the endpoint and what to check."""
        endpoint = self._client.meta.endpoint_url if self._client is not None else "AWS S3"
        text = f"{type(e).__name__}: {e}"
        if isinstance(e, PermissionError) or any(w in text for w in ("Forbidden", "AccessDenied", "InvalidAccessKeyId",
                                                                     "SignatureDoesNotMatch", "NoCredentials")):
            return StoreError(
                f"{endpoint} refused access to {self.url} ({e}): check the credentials (AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE), the bucket name and its policy"
            )
        if "imeout" in text or "Connect" in text:
            return StoreError(
                f"{endpoint} did not answer for {self.url} ({text}): check the endpoint URL "
                "(--storage-option endpoint_url=… or AWS_ENDPOINT_URL) and the network; timeouts are "
                "set by -o config_kwargs='{\"connect_timeout\": 5, \"read_timeout\": 15}'"
            )
        return StoreError(f"{endpoint}: cannot reach {self.url}: {e}")

    def same_content(self, key: str, local: Path, hexdigest: str, size: int) -> bool:
        """Size and ETag instead of downloading the object again: S3's ETag of an unencrypted
        object is the MD5 of its bytes (single PUT) or of its parts' MD5s (multipart, "-N"), which
        we recompute from the local file, learning the part size from a HEAD of part 1. An ETag we
        cannot reproduce (SSE-KMS, other part layouts) answers False: the blob is uploaded again,
        which costs bandwidth, never correctness."""
        try:
            head = self._call("head_object", key)
        except FileNotFoundError:
            return False
        if int(head["ContentLength"]) != size:
            return False
        etag = head["ETag"].strip('"')
        parts = int(etag.split("-", 1)[1]) if "-" in etag else 0
        part_size = size
        if parts:
            part_size = int(self._call("head_object", key, PartNumber=1)["ContentLength"])
        return _s3_etag(local, part_size, multipart=bool(parts)) == etag

    def stale_uploads(self) -> Iterator[tuple[str, datetime]]:
        bucket, prefix = self._bucket_key("")
        resp = self._call("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        for up in resp.get("Uploads", []):
            yield f"{up['Key']}?uploadId={up['UploadId']}", up["Initiated"]

    def remove_stale_upload(self, key: str) -> None:
        path, _, upload_id = key.partition("?uploadId=")
        bucket, _, k = path.partition("/")
        self._call("abort_multipart_upload", Bucket=bucket, Key=k, UploadId=upload_id)


def overdue(endpoint: str, url: str, what: str, seconds: float) -> StoreError:
    return StoreError(
        f"{endpoint} did not finish a request for {url} ({what}) within its {seconds:.0f} s deadline: "
        "an endpoint sending bytes too slowly never trips the connect or read timeout; check the endpoint "
        "URL (--storage-option endpoint_url=… or AWS_ENDPOINT_URL) and the network, or allow more with "
        "-o deadline=SECONDS"
    )


@functools.cache
def _deadline_s3fs() -> type:
    """s3fs whose every request ends within the store's deadline, plus a second per MIN_RATE bytes
    it sends or streams back (a blob's body is read after s3fs's call returns: bounded too). Built on
    first use: importing s3fs costs more than a whole `list`."""
    import asyncio
    import time

    from s3fs import S3FileSystem

    class DeadlineS3FileSystem(S3FileSystem):
        def __init__(self, *args: Any, deadline: float, registry_url: str, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)  # instances are cached by all arguments, these two included
            self.deadline, self.registry_url = deadline, registry_url

        def on_overdue(self, what: str, seconds: float) -> StoreError:
            s3 = getattr(self, "_s3", None)
            return overdue(s3.meta.endpoint_url if s3 is not None else "AWS S3", self.registry_url, what, seconds)

        async def _call_s3(self, method: Any, *akwarglist: Any, **kwargs: Any) -> Any:
            body = kwargs.get("Body")
            budget = self.deadline + (len(body) if isinstance(body, (bytes, bytearray)) else 0) / MIN_RATE
            start = time.monotonic()
            what = f"{method} {kwargs.get('Key', '')}".strip()
            try:
                resp = await asyncio.wait_for(super()._call_s3(method, *akwarglist, **kwargs), budget)
            except asyncio.TimeoutError:
                raise self.on_overdue(what, budget) from None
            if isinstance(resp, dict) and "Body" in resp:
                budget += (resp.get("ContentLength") or 0) / MIN_RATE
                resp["Body"] = _BoundedBody(resp["Body"], start + budget, lambda: self.on_overdue(what, budget))
            return resp

    class _BoundedBody:
        """A response body whose reads end by `until` (time.monotonic()); forwards read and close,
        the two s3fs uses."""

        def __init__(self, body: Any, until: float, overdue: Any) -> None:
            self._body, self._until, self._overdue = body, until, overdue

        async def read(self, *args: Any) -> bytes:
            try:
                return await asyncio.wait_for(self._body.read(*args), max(0.0, self._until - time.monotonic()))
            except asyncio.TimeoutError:
                self._body.close()
                raise self._overdue() from None

        def close(self) -> None:
            self._body.close()

    return DeadlineS3FileSystem


# botocore method -> S3 operation name (its input shape says which extra parameters apply)
_OPERATIONS = {"get_object": "GetObject", "head_object": "HeadObject", "put_object": "PutObject",
               "delete_object": "DeleteObject", "list_objects_v2": "ListObjectsV2",
               "list_multipart_uploads": "ListMultipartUploads", "abort_multipart_upload": "AbortMultipartUpload"}


def _code(e: Any) -> str | None:
    return ((getattr(e, "response", None) or {}).get("Error") or {}).get("Code")


def _status(e: Any) -> int | None:
    return ((getattr(e, "response", None) or {}).get("ResponseMetadata") or {}).get("HTTPStatusCode")


def _s3_etag(local: Path, part_size: int, *, multipart: bool) -> str:
    """The ETag S3 gives these bytes: MD5 of the body, or MD5 of the parts' MD5s then "-N"."""
    digests = []
    with open(local, "rb") as f:
        while True:
            h, n = hashlib.md5(usedforsecurity=False), 0
            while n < part_size and (block := f.read(min(part_size - n, 8 * 2**20))):
                h.update(block)
                n += len(block)
            if n == 0 and digests:
                break
            digests.append(h)
            if n < part_size:
                break
    if not multipart:
        return digests[0].hexdigest()
    return hashlib.md5(b"".join(d.digest() for d in digests), usedforsecurity=False).hexdigest() + f"-{len(digests)}"


# S3's answers to a conditional write that did not hold: 412 PreconditionFailed, and 409
# ConditionalRequestConflict when another conditional write to the key is in flight.
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


def is_precondition_failure(e: BaseException) -> bool:
    """Whether S3 refused a conditional write, decided from the error code and HTTP status of the
    botocore ClientError (raised as is, or kept by s3fs as the cause of its OSError). Never from message text: a
    key like `law/1.412.0.json` or a request id may contain "412" in any other error."""
    seen: set[int] = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code in _PRECONDITION_CODES or status == 412:
                return True
        err = err.__cause__ or err.__context__
    return False
