"""S3 behaviour of the Store (s3:// through s3fs), kept out of store.py so the protocol reads alone.

Exclusive create and compare-and-swap are S3 conditional writes (If-None-Match: * and If-Match:
<etag>), atomic on the server; small documents are read with one GET each (no HEAD first), several
at once in one gather; a blob's content is checked by its ETag instead of downloading it again; and
every backend error leaves here as one actionable StoreError or the builtin the registry expects.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from memreg.registry.errors import ConcurrentUpdateError, StoreError
from memreg.registry.store import Store

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

    def etags(self, prefix: str) -> dict[str, str]:
        """One ListObjectsV2 page per 1,000 keys: each key with the ETag a GET of it reports."""
        bucket, path = self._bucket_key(prefix)
        base = path.rstrip("/") + "/"
        strip = len(self._bucket_key("")[1])  # the registry's folder inside the bucket, "" or "reg/"
        out: dict[str, str] = {}
        token: dict[str, str] = {}
        while True:
            try:
                page = self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=base, **token)
            except Exception as e:  # noqa: BLE001
                raise self._unreachable(e) from e
            out |= {c["Key"][strip:]: c["ETag"] for c in page.get("Contents", [])}
            if not page.get("IsTruncated"):
                return out
            token = {"ContinuationToken": page["NextContinuationToken"]}

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
