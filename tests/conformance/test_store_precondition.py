"""S3 precondition failures are recognised by the error code S3 sends, not by text in a message.

A failed conditional write (If-None-Match: * on create, If-Match: <etag> on a tag swap) is the
normal signal of a concurrent writer and becomes FileExistsError / ConcurrentUpdateError. Any other
S3 failure must stay a StoreError, even when its message or key happens to contain "412"
(a version 1.412.0, a request id): reporting it as "already exists" would hide the real fault.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from memreg.registry.errors import ConcurrentUpdateError, StoreError
from memreg.registry.store import S3Store, open_store
from memreg.registry.store.s3 import is_precondition_failure


def _s3_error(code: str, message: str, status: int, **error: str) -> ClientError:
    """The exception botocore raises for this S3 answer (the store's document client is botocore)."""
    response = {"Error": {"Code": code, "Message": message, **error},
                "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


def _real_412(store: S3Store) -> ClientError:
    """Provoke a real 412 from the moto server: a PUT with an If-Match that cannot hold."""
    bucket, key = store._bucket_key("packages/law/tags/latest.json")
    store.put_bytes("packages/law/tags/latest.json", b"{}")
    with pytest.raises(ClientError) as info:
        store.client.put_object(Bucket=bucket, Key=key, Body=b"{}", IfMatch='"0000"')
    return info.value


def test_real_412_from_s3_is_a_precondition_failure(s3_url):
    store = open_store(s3_url)
    err = _real_412(store)
    assert is_precondition_failure(err)
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 412  # it is the real thing


def test_precondition_kept_as_the_cause_of_an_oserror_counts():
    """s3fs (blob transfers) raises OSError with botocore's error as its cause: still recognised."""
    try:
        raise OSError(5, "precondition") from _s3_error("PreconditionFailed", "At least one condition failed", 412)
    except OSError as e:
        assert is_precondition_failure(e)


def test_real_exclusive_create_conflict_is_file_exists(s3_url):
    store = open_store(s3_url)
    store.create("packages/law/1.412.0.json", b"{}")
    with pytest.raises(FileExistsError):
        store.create("packages/law/1.412.0.json", b"{}")


@pytest.mark.parametrize("code,status", [("PreconditionFailed", 412), ("ConditionalRequestConflict", 409),
                                         ("SomeFutureCode", 412)])
def test_precondition_codes_count(code, status):
    assert is_precondition_failure(_s3_error(code, "condition did not hold", status))


@pytest.mark.parametrize("code,message,status", [
    ("InternalError", "We encountered an internal error (request 4127A0F)", 500),
    ("SlowDown", "Please reduce your request rate for packages/law/1.412.0.json", 503),
    ("AccessDenied", "Access Denied to packages/law/tags/412.json", 403),
])
def test_lookalike_message_with_412_does_not_count(code, message, status):
    err = _s3_error(code, message, status)
    assert "412" in repr(err)  # the old substring test would have said yes
    assert not is_precondition_failure(err)


def test_plain_oserror_mentioning_412_does_not_count():
    assert not is_precondition_failure(OSError(5, "connection reset after 412 bytes"))


def test_lookalike_on_swap_is_a_store_error_not_a_concurrent_update(s3_url, monkeypatch):
    store = open_store(s3_url)

    def failing(*args, **kwargs):
        raise _s3_error("InternalError", "internal error on packages/law/1.412.0.json", 500)

    monkeypatch.setattr(store.client, "put_object", failing)
    with pytest.raises(StoreError) as info:
        store.swap("packages/law/tags/latest.json", b"{}", expected=None)
    assert not isinstance(info.value, ConcurrentUpdateError)


def test_lookalike_on_create_is_a_store_error_not_exists(s3_url, monkeypatch):
    store = open_store(s3_url)

    def failing(*args, **kwargs):
        raise _s3_error("InternalError", "internal error on packages/law/1.412.0.json", 500)

    monkeypatch.setattr(store.client, "put_object", failing)
    with pytest.raises(StoreError):
        store.create("packages/law/1.412.0.json", b"{}")


def test_real_412_on_swap_is_a_concurrent_update(s3_url):
    store = open_store(s3_url)
    store.swap("packages/law/tags/latest.json", b'{"v": 1}', expected=None)
    with pytest.raises(ConcurrentUpdateError):
        store.swap("packages/law/tags/latest.json", b'{"v": 2}', expected='"not-the-etag"')
