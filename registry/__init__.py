"""memreg.registry: versioned memory packages on any fsspec store. Never imports torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "fingerprint": "memreg.registry.fingerprinting",
    "check_compatible": "memreg.registry.fingerprinting",
    "Compatibility": "memreg.registry.fingerprinting",
    "Registry": "memreg.registry.api",
    "parse_ref": "memreg.registry.refs",
    "Ref": "memreg.registry.refs",
}

if TYPE_CHECKING:
    from memreg.registry.api import Registry
    from memreg.registry.fingerprinting import Compatibility, check_compatible, fingerprint
    from memreg.registry.refs import Ref, parse_ref

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memreg.registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
