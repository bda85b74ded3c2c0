"""The S3 store's two clients: documents through botocore, blobs through s3fs.

Commands that read only documents (`list`, `show`, a cached `pull`) must not import s3fs (its import
costs more than all of `list`'s requests) nor even fsspec (~45 ms); the document client must honour the same storage options
s3fs does (credentials, anon, requester pays, extra request parameters) and refuse ones it does not
know with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, memreg_cli
from memreg.registry import Registry
from memreg.registry.errors import StoreError
from memreg.registry.store import open_store

READ_ONLY = """
import json, sys
from memreg.registry import Registry
reg = Registry.open(sys.argv[1])
names = [p.manifest.name for p in reg.list(all_versions=True)]
manifest, state = reg.show("law")
folder = reg.pull("law")  # cached: no blob is downloaded
print(json.dumps({"names": names, "show": manifest.version, "pulled": str(folder),
                  "loaded": sorted(m for m in ("s3fs", "aiobotocore", "aiohttp", "fsspec") if m in sys.modules)}))
"""


def test_document_commands_never_import_s3fs_or_fsspec(s3_url, tiny_package, memreg_home):
    reg = Registry.init(s3_url)
    reg.publish(tiny_package, name="law", version="1.0.0")
    first = reg.pull("law")  # blobs: s3fs
    proc = subprocess.run([sys.executable, "-c", READ_ONLY, s3_url], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["names"] == ["law"] and out["show"] == "1.0.0" and out["pulled"] == str(first)
    assert out["loaded"] == []


def _params_of(store, operation: str) -> list[dict]:
    """Parameters of every `operation` request the store's document client builds from now on."""
    seen: list[dict] = []
    store.client.meta.events.register(f"before-parameter-build.s3.{operation}",
                                      lambda params, **_: seen.append(dict(params)))
    return seen


def test_requester_pays_and_extra_parameters_go_where_s3_accepts_them(s3_url):
    store = open_store(s3_url, {"requester_pays": True, "s3_additional_kwargs": {"ServerSideEncryption": "AES256"}})
    puts, gets, lists = (_params_of(store, op) for op in ("PutObject", "GetObject", "ListObjectsV2"))
    store.put_bytes("index/x.json", b"{}")
    assert store.read("index/x.json") == b"{}"
    assert store.list("index") == ["index/x.json"]
    assert puts[0]["ServerSideEncryption"] == "AES256" and puts[0]["RequestPayer"] == "requester"
    assert gets[0]["RequestPayer"] == "requester" and "ServerSideEncryption" not in gets[0]
    assert lists[0]["RequestPayer"] == "requester" and "ServerSideEncryption" not in lists[0]


def test_anonymous_access_signs_nothing(s3_url):
    from botocore import UNSIGNED

    store = open_store(s3_url, {"anon": True, "key": "ignored", "secret": "ignored"})
    signed: list[str] = []
    store.client.meta.events.register("before-sign.s3", lambda request, **_: signed.append(
        request.headers.get("Authorization")))
    assert store.client.meta.config.signature_version is UNSIGNED
    assert store.read_many(["index/none.json"]) == {"index/none.json": None}
    assert signed in ([], [None])  # botocore skips signing, or signs with no credentials


def test_explicit_credentials_are_the_ones_used(s3_url):
    store = open_store(s3_url, {"key": "AKIDEXPLICIT", "secret": "s3cr3t", "token": "tok"})
    creds = store.client._request_signer._credentials  # what every request is signed with
    assert (creds.access_key, creds.secret_key, creds.token) == ("AKIDEXPLICIT", "s3cr3t", "tok")


def test_unknown_storage_option_is_refused_with_one_line(s3_url):
    with pytest.raises(StoreError, match="unknown S3 storage option.*frobnicate"):
        open_store(s3_url, {"frobnicate": 1}).read_many(["a.json", "b.json"])
    proc = memreg_cli("list", "--registry", s3_url, "-o", "frobnicate=1")
    assert proc.returncode != 0 and "frobnicate" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_missing_profile_is_one_line_naming_it(s3_url):
    proc = memreg_cli("list", "--registry", s3_url, "-o", "profile=no-such-profile")
    assert proc.returncode != 0 and "no-such-profile" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
