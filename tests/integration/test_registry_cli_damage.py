"""Issue 23 item 4 as a user meets it: one damaged index and a damaged catalog took `memreg list`
down for everyone; now `list` answers (exit 0) and says on stderr which document it bypassed."""

from __future__ import annotations

import json
import uuid

import pytest

from conftest import memreg_cli
from memreg.registry import catalog
from memreg.registry.index import index_key
from memreg.schemas import NameIndex

pytestmark = pytest.mark.slow  # each test runs memreg in several fresh processes


@pytest.fixture(params=["local", "s3"])
def registry_url(request, tmp_path) -> str:
    """The backends a second process can reach (memory:// lives in one process): overrides conftest's
    for this module, so law_and_code builds its registry on each."""
    if request.param == "local":
        return str(tmp_path / f"registry-{uuid.uuid4().hex[:8]}")
    return request.getfixturevalue("s3_url")


@pytest.mark.parametrize("flags", [[], ["--all"], ["--compatible-with", "FINGERPRINT"]], ids=["list", "all", "compatible"])
def test_list_answers_and_names_the_damaged_documents(law_and_code, flags):
    reg = law_and_code
    index = NameIndex.model_validate_json(reg.store.read(index_key("law")))
    digest = index.versions["1.1.0"].summary.tokenizer
    doc = index.model_dump(mode="json")
    doc["versions"]["banana"] = doc["versions"]["1.1.0"]  # a key that is no version
    doc["fingerprints"] = {}  # and no fingerprint for the summaries
    reg.store.put_bytes(index_key("law"), json.dumps(doc).encode())
    reg.store.put_bytes(catalog.KEY, b'{"format": 1, "indexes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    proc = memreg_cli("list", "--registry", reg.url, *[digest if f == "FINGERPRINT" else f for f in flags])
    assert proc.returncode == 0, proc.stderr
    rows = [line.split()[:2] for line in proc.stdout.splitlines()[1:] if line.strip()]  # under the table's header
    assert rows == ([["code", "0.1.0"], ["law", "1.0.0"], ["law", "1.1.0"]] if "--all" in flags
                    else [["code", "0.1.0"], ["law", "1.1.0"]])
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert any(f"{reg.url}/{catalog.KEY}" in w for w in warnings), proc.stderr
    assert any(f"{reg.url}/{index_key('law')}" in w and "rebuilt" in w for w in warnings), proc.stderr
    assert "Traceback" not in proc.stderr
    again = memreg_cli("list", "--registry", reg.url, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["warnings"] == []  # both repaired by the first list
