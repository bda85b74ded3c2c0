"""One storage protocol over fsspec, with the few atomic primitives the registry needs.

The registry never calls fsspec directly: it asks a Store for
  * `put_file` / `put_bytes`: overwrite (content-addressed blobs: same key, same bytes);
  * `create`: exclusive create, the commit point of a publish (FileExistsError if present);
  * `swap`: compare-and-swap of a small mutable document (tags), keyed by an opaque etag.
Protocol-specific behaviour stays here, at the edge: S3 uses conditional writes
(If-None-Match: * and If-Match: <etag>), a local folder uses link(2) and flock(2), memory:// a
process lock. Backend errors are translated here and nowhere else.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fsspec
from fsspec.callbacks import DEFAULT_CALLBACK, Callback

from memreg.registry.errors import ConcurrentUpdateError, StoreError
from memreg.registry.fsutil import TMP_PREFIX, atomic_path, atomic_write_bytes, sha256_stream, write_temp


class Store:
    """A registry root on some fsspec filesystem. Keys are POSIX paths relative to the root."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    # reads -------------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StoreError(f"cannot read {key} from {self.url}: {e}") from e

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        """The document and an etag that `swap` accepts as `expected`."""
        data = self.read(key)
        return data, _content_etag(data)

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def size(self, key: str) -> int:
        return int(self.fs.info(self._path(key))["size"])

    def modified(self, key: str) -> datetime:
        info = self.fs.info(self._path(key))
        for field in ("LastModified", "mtime", "created"):
            value = info.get(field)
            if isinstance(value, datetime):
                return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
            if isinstance(value, (int, float)):
                return datetime.fromtimestamp(value, tz=timezone.utc)
        try:
            return self.fs.modified(self._path(key)).replace(tzinfo=timezone.utc)
        except (NotImplementedError, AttributeError):
            return datetime.now(timezone.utc)

    def list(self, prefix: str) -> list[str]:
        """Keys of files below prefix (recursive), relative to the root, sorted."""
        base = self._path(prefix).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        root = self.root + "/" if self.root else ""
        out = []
        for p in found:
            p = p if not root or p.startswith(root) else self.fs._strip_protocol(p)
            out.append(p[len(root):] if root and p.startswith(root) else p)
        return sorted(out)

    def children(self, prefix: str) -> list[str]:
        """Names of the folders directly below prefix (S3: one delimiter listing, whatever is below)."""
        try:
            entries = self.fs.ls(self._path(prefix).rstrip("/"), detail=True, **self._fresh)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    _fresh: dict[str, Any] = {}  # S3: refresh=True, so a listing is never an old cached one

    def etag_of(self, data: bytes) -> str:
        """The etag `read_with_etag` would report for a document holding exactly `data`."""
        return _content_etag(data)

    def read_many(self, keys: list[str]) -> dict[str, bytes | None]:
        """Several small documents at once (None where missing). Threads here; S3 overrides it
        with one s3fs gather, so the cost is about one round trip, not one per key."""
        from concurrent.futures import ThreadPoolExecutor

        def one(key: str) -> bytes | None:
            try:
                return self.read(key)
            except FileNotFoundError:
                return None

        with ThreadPoolExecutor(max_workers=8) as pool:
            return dict(zip(keys, pool.map(one, keys)))

    def open_read(self, key: str, block_size: int = 8 * 2**20):
        return self.fs.open(self._path(key), "rb", block_size=block_size)

    def get_file(self, key: str, local: Path, callback: Callback = DEFAULT_CALLBACK) -> None:
        self.fs.get_file(self._path(key), str(local), callback=callback)

    # writes ------------------------------------------------------------------------------
    def put_file(self, key: str, local: Path, callback: Callback = DEFAULT_CALLBACK) -> None:
        """Upload, overwriting. Used for content-addressed blobs only (same key, same bytes)."""
        self.fs.put_file(str(local), self._path(key), callback=callback)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data)

    def create(self, key: str, data: bytes) -> None:
        """Write `data` at `key` only if nothing is there; FileExistsError otherwise. Atomic."""
        raise NotImplementedError

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        """Replace the document at `key` if its etag is still `expected` (None: must not exist).

        Raises ConcurrentUpdateError when somebody else changed it first.
        """
        raise NotImplementedError

    def _check_then_write(self, key: str, data: bytes, expected: str | None) -> None:
        """Compare-and-swap for backends without conditional writes; atomic only under a lock."""
        try:
            current = _content_etag(self.read(key))
        except FileNotFoundError:
            current = None
        if current != expected:
            raise ConcurrentUpdateError(f"{key} changed while it was being updated")
        self.fs.pipe_file(self._path(key), data)

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def same_content(self, key: str, local: Path, hexdigest: str, size: int) -> bool:
        """Whether the stored object at `key` holds exactly these bytes (`local`, whose sha256 and
        size are known). The default re-hashes the stored bytes: cheap on a local disk and memory://."""
        try:
            if self.size(key) != size:
                return False
            with self.open_read(key) as f:
                got, n = sha256_stream(f)
        except FileNotFoundError:
            return False
        return n == size and got == hexdigest

    def stale_uploads(self) -> Iterator[tuple[str, datetime]]:
        """Leftovers of interrupted uploads (temp files, open multipart uploads), with their age."""
        return iter(())

    def remove_stale_upload(self, key: str) -> None:
        self.delete(key)


def _content_etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStore(Store):
    """A folder. Exclusive create = link(2) of a fully written temp file (fails if the name exists);
    compare-and-swap = flock(2) on a lock file, then write-temp-and-rename."""

    TMP = TMP_PREFIX

    def _dest(self, key: str) -> Path:
        dest = Path(self._path(key))
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    def put_file(self, key: str, local: Path, callback: Callback = DEFAULT_CALLBACK) -> None:
        with atomic_path(self._dest(key)) as tmp:  # readers see the old bytes or the new, never half
            self.fs.put_file(str(local), str(tmp), callback=callback)

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self._dest(key), data, fsync=True)

    def create(self, key: str, data: bytes) -> None:
        dest = self._dest(key)
        tmp = write_temp(dest, data, fsync=True)
        try:
            os.link(tmp, dest)  # atomic and exclusive: EEXIST if anybody created it first
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "already exists", key) from None
        finally:
            tmp.unlink(missing_ok=True)

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        import fcntl

        dest = Path(self._path(key))
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest.parent / f".lock-{dest.name}", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, and by the kernel if we die
            try:
                current = _content_etag(dest.read_bytes())
            except FileNotFoundError:
                current = None
            if current != expected:
                raise ConcurrentUpdateError(f"{key} changed while it was being updated")
            atomic_write_bytes(dest, data, fsync=True)

    def list(self, prefix: str) -> list[str]:
        base = Path(self._path(prefix))
        if not base.exists():
            return []
        root = Path(self.root)
        return sorted(
            p.relative_to(root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith((self.TMP, ".lock-"))
        )

    def stale_uploads(self) -> Iterator[tuple[str, datetime]]:
        root = Path(self.root)
        for p in root.rglob(f"{self.TMP}*"):
            try:  # a publisher may rename or remove its temp file while we look
                mtime = datetime.fromtimestamp(p.stat().st_mtime, tz=timezone.utc)
            except FileNotFoundError:
                continue
            yield p.relative_to(root).as_posix(), mtime


class MemoryStore(Store):
    """memory:// (one process): a lock makes create and swap atomic."""

    _lock = threading.Lock()

    def create(self, key: str, data: bytes) -> None:
        with self._lock:
            if self.exists(key):
                raise FileExistsError(errno.EEXIST, "already exists", key)
            self.fs.pipe_file(self._path(key), data)

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        with self._lock:
            self._check_then_write(key, data, expected)


class S3Store(Store):
    """s3:// through s3fs. Conditional writes make create and swap atomic on the server."""

    _fresh = {"refresh": True}

    def _bucket_key(self, key: str) -> tuple[str, str]:
        bucket, _, path = self._path(key).partition("/")
        return bucket, path

    def read(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key), max_concurrency=1)  # small documents: no HEAD for a size first
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - translated into one actionable line
            raise self._unreachable(e) from e

    def read_with_etag(self, key: str) -> tuple[bytes, str]:
        bucket, path = self._bucket_key(key)
        try:
            resp = self.fs.call_s3("get_object", Bucket=bucket, Key=path)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StoreError(f"cannot read {key} from {self.url}: {e}") from e
        body = _sync_read(self.fs, resp["Body"])
        return body, resp["ETag"]

    def create(self, key: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._path(key), data, mode="create")
        except FileExistsError:
            raise
        except OSError as e:
            if _is_precondition_failure(e):
                raise FileExistsError(errno.EEXIST, "already exists", key) from e
            raise StoreError(f"cannot create {key} on {self.url}: {e}") from e

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        bucket, path = self._bucket_key(key)
        cond = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=path, Body=data, **cond)
        except (FileExistsError, FileNotFoundError) as e:
            raise ConcurrentUpdateError(f"{key} changed while it was being updated") from e
        except OSError as e:
            if _is_precondition_failure(e):
                raise ConcurrentUpdateError(f"{key} changed while it was being updated") from e
            raise StoreError(f"cannot update {key} on {self.url}: {e}") from e
        finally:
            self.fs.invalidate_cache(self._path(key))

    def exists(self, key: str) -> bool:
        try:
            return super().exists(key)
        except FileNotFoundError:
            return False
        except Exception as e:  # noqa: BLE001 - translated into one actionable line
            raise self._unreachable(e) from e

    def list(self, prefix: str) -> list[str]:
        try:
            return super().list(prefix)
        except FileNotFoundError:
            return []
        except Exception as e:  # noqa: BLE001
            raise self._unreachable(e) from e

    def children(self, prefix: str) -> list[str]:
        try:
            return super().children(prefix)
        except Exception as e:  # noqa: BLE001
            raise self._unreachable(e) from e

    def etag_of(self, data: bytes) -> str:
        return f'"{hashlib.md5(data).hexdigest()}"'  # S3's ETag of a single-part upload  # noqa: S324

    def read_many(self, keys: list[str]) -> dict[str, bytes | None]:
        if not keys:
            return {}
        import asyncio

        from fsspec.asyn import sync

        async def gather() -> list:
            # s3fs's cat() HEADs every path (glob expansion, then a size for ranged reads): one GET each is enough
            return await asyncio.gather(*(self.fs._cat_file(self._path(k), max_concurrency=1) for k in keys),
                                        return_exceptions=True)

        out: dict[str, bytes | None] = {}
        for key, value in zip(keys, sync(self.fs.loop, gather)):
            if isinstance(value, FileNotFoundError):
                out[key] = None
            elif isinstance(value, BaseException):
                raise self._unreachable(value) from value
            else:
                out[key] = value
        return out

    def _unreachable(self, e: Exception) -> Exception:
        """Forbidden and timeouts as a StoreError naming the endpoint and what to check."""
        endpoint = (self.fs.client_kwargs or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        text = f"{type(e).__name__}: {e}"
        if isinstance(e, PermissionError) or "Forbidden" in text or "AccessDenied" in text or "InvalidAccessKeyId" in text:
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
        if isinstance(e, OSError):
            return StoreError(f"{endpoint}: cannot reach {self.url}: {e}")
        return e

    def same_content(self, key: str, local: Path, hexdigest: str, size: int) -> bool:
        """Size and ETag instead of downloading the object again: S3's ETag of an unencrypted
        object is the MD5 of its bytes (single PUT) or of its parts' MD5s (multipart, "-N"), which
        we recompute from the local file, learning the part size from a HEAD of part 1. An ETag we
        cannot reproduce (SSE-KMS, other part layouts) answers False: the blob is uploaded again,
        which costs bandwidth, never correctness."""
        bucket, path = self._bucket_key(key)
        try:
            head = self.fs.call_s3("head_object", Bucket=bucket, Key=path)
        except FileNotFoundError:
            return False
        if int(head["ContentLength"]) != size:
            return False
        etag = head["ETag"].strip('"')
        parts = int(etag.split("-", 1)[1]) if "-" in etag else 0
        part_size = size
        if parts:
            first = self.fs.call_s3("head_object", Bucket=bucket, Key=path, PartNumber=1)
            part_size = int(first["ContentLength"])
        return _s3_etag(local, part_size, multipart=bool(parts)) == etag

    def stale_uploads(self) -> Iterator[tuple[str, datetime]]:
        bucket, prefix = self._bucket_key("")
        resp = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        for up in resp.get("Uploads", []):
            yield f"{up['Key']}?uploadId={up['UploadId']}", up["Initiated"]

    def remove_stale_upload(self, key: str) -> None:
        path, _, upload_id = key.partition("?uploadId=")
        bucket, _, k = path.partition("/")
        self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=k, UploadId=upload_id)


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


def _sync_read(fs: Any, body: Any) -> bytes:
    """Read an aiobotocore streaming body from sync code, on s3fs's own event loop."""
    from fsspec.asyn import sync

    async def _read() -> bytes:
        async with body:
            return await body.read()

    return sync(fs.loop, _read)


# S3's answers to a conditional write that did not hold: 412 PreconditionFailed, and 409
# ConditionalRequestConflict when another conditional write to the key is in flight.
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


def _is_precondition_failure(e: BaseException) -> bool:
    """Whether S3 refused a conditional write, decided from the error code and HTTP status of the
    botocore ClientError that s3fs keeps as the cause of its OSError. Never from message text: a
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


# A silent endpoint must fail in bounded time: at most S3_RETRIES x S3_ATTEMPTS x read timeout
# (2 x 2 x 15 s = 60 s) plus s3fs's short back-off, instead of s3fs's and botocore's defaults
# (5 x 5 x 15 s, measured 415 s). Any of them can be overridden with --storage-option.
S3_CONNECT_TIMEOUT = 5
S3_READ_TIMEOUT = 15
S3_RETRIES = 2  # s3fs's own retry loop
S3_ATTEMPTS = 2  # botocore's attempts per s3fs try


def s3_defaults(opts: dict[str, Any]) -> dict[str, Any]:
    opts = dict(opts)
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("connect_timeout", S3_CONNECT_TIMEOUT)
    config.setdefault("read_timeout", S3_READ_TIMEOUT)
    config.setdefault("retries", {"total_max_attempts": S3_ATTEMPTS, "mode": "standard"})
    opts["config_kwargs"] = config
    return opts


def open_store(url: str, storage_options: dict[str, Any] | None = None) -> Store:
    """A Store for any fsspec URL: a plain path, file://, memory://, s3://, gs://, …"""
    opts = dict(storage_options or {})
    retries = None
    if url.startswith(("s3://", "s3a://")):
        opts = s3_defaults(opts)
        retries = int(opts.pop("retries", S3_RETRIES))  # s3fs's retry loop is an attribute, not an option
    fs, root = fsspec.core.url_to_fs(url, **opts)
    if retries is not None:
        fs.retries = retries
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return LocalStore(fs, root, url)
    if protocol == "memory":
        return MemoryStore(fs, root, url)
    if protocol in ("s3", "s3a"):
        return S3Store(fs, root, url)
    return GenericStore(fs, root, url)


class GenericStore(Store):
    """Other fsspec backends: exclusive create via mode='create' where supported, else a
    check-then-write that is not safe under concurrent publishers (said in the docs)."""

    def create(self, key: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._path(key), data, mode="create")
            return
        except TypeError:
            pass
        if self.exists(key):
            raise FileExistsError(errno.EEXIST, "already exists", key)
        self.fs.pipe_file(self._path(key), data)

    def swap(self, key: str, data: bytes, *, expected: str | None) -> None:
        self._check_then_write(key, data, expected)  # not atomic across processes (see class doc)
