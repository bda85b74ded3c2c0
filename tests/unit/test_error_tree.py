"""One error tree: every exception class memreg defines is a MemregError (issue 13), so a caller's
`except MemregError` catches everything memreg raises on purpose, and still the builtin it extends."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import memreg
from memreg.registry.errors import MemregError


def _modules():
    seen = []
    for info in pkgutil.walk_packages(memreg.__path__, "memreg."):
        if info.name.endswith("__main__"):
            continue
        seen.append(importlib.import_module(info.name))
    for name in ("memreg.registry", "memreg.cli", "memreg.schemas"):
        pkg = importlib.import_module(name)
        seen += [importlib.import_module(i.name) for i in pkgutil.walk_packages(pkg.__path__, name + ".")]
    return seen


def test_every_memreg_exception_is_a_memreg_error():
    defined = {obj for mod in _modules() for _, obj in inspect.getmembers(mod, inspect.isclass)
               if issubclass(obj, BaseException) and obj.__module__.startswith("memreg")}
    assert len(defined) > 20  # the walk found the modules
    # private ones (datastore's _StopForward) are control flow caught where raised, never seen by callers
    outside = sorted(c.__qualname__ for c in defined if not issubclass(c, MemregError) and not c.__name__.startswith("_"))
    assert outside == []


def test_formerly_outside_errors_keep_their_builtin_base():
    from memreg.mixture import InvalidWeightsError, check_weights
    from memreg.schemas import UnsupportedFormatError

    assert issubclass(UnsupportedFormatError, ValueError) and issubclass(InvalidWeightsError, ValueError)
    try:
        check_weights([0.7, 0.6])
    except MemregError as e:
        assert isinstance(e, InvalidWeightsError) and "sum to" in str(e)
    else:
        raise AssertionError("weights summing past 1 were accepted")
