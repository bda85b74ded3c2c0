"""memreg.registry: versioned memory packages on any fsspec store. Never imports torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memreg.core.lazy import module_getattr

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


__getattr__ = module_getattr(__name__, _LAZY, globals())
