"""The registry the index and catalog conformance tests start from."""

from __future__ import annotations

import pytest

from memreg.registry import Registry
from memreg.schemas import DomainMetadata


@pytest.fixture
def law_and_code(registry_url, tiny_package) -> Registry:
    """A registry with law@1.0.0, law@1.1.0 and code@0.1.0 published in that order."""
    reg = Registry.init(registry_url)
    reg.publish(tiny_package, name="law", version="1.0.0", description="first", domain=DomainMetadata(labels=["law"]))
    reg.publish(tiny_package, name="law", version="1.1.0", description="second", domain=DomainMetadata(labels=["law"]))
    reg.publish(tiny_package, name="code", version="0.1.0", description="code", domain=DomainMetadata(labels=["code"]))
    return reg

