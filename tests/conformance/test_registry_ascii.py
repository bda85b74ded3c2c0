"""Issue 23 item 6 on every backend (local folder, memory://, moto S3): a version with a non-ASCII
digit is neither published nor resolved, even when somebody plants its manifest in the store."""

from __future__ import annotations

import logging

import pytest

from memreg.registry import Registry
from memreg.registry.api import manifest_key
from memreg.registry.errors import InvalidReferenceError


@pytest.fixture
def reg(registry_url) -> Registry:
    return Registry.init(registry_url)


@pytest.mark.parametrize("version", ["1.0.9\u0669", "1.0.1\uff10"])
def test_publish_refuses_a_look_alike_version_and_writes_nothing(reg, tiny_package, version):
    before = reg.store.list("")
    with pytest.raises(InvalidReferenceError, match="ASCII digits 0-9"):
        reg.publish(tiny_package, name="law", version=version)
    assert reg.store.list("") == before  # not a blob, lease, index or manifest


def test_a_planted_look_alike_manifest_is_not_what_a_name_resolves_to(reg, tiny_package, caplog):
    """1.0.9\u0669 ranked as 1.0.99, above 1.0.10, so `law` resolved to the planted manifest."""
    reg.publish(tiny_package, name="law", version="1.0.10")
    raw = reg.store.read(manifest_key("law", "1.0.10")).decode()
    for fake in ("1.0.9\u0669", "1.0.1\uff10"):
        reg.store.put_bytes(f"packages/law/{fake}.json", raw.replace('"1.0.10"', f'"{fake}"').encode())
    with caplog.at_level(logging.WARNING, logger="memreg.registry"):
        assert reg.resolve("law").version == "1.0.10"
        assert reg.resolve("law:latest").version == "1.0.10"
        assert reg.versions("law") == ["1.0.10"]
    assert "1.0.9\u0669" in caplog.text  # skipped with a warning naming it
    with pytest.raises(InvalidReferenceError, match="is not ASCII"):
        reg.resolve("law@1.0.9\u0669")
