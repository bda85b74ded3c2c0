"""One lazy loader for memreg's packages (PEP 562): a package lists `public name -> defining module`
and the name is imported on first use, so `import memreg` or `memreg list` never pulls in torch,
transformers or faiss through a package `__init__`.

`module_getattr` builds a plain package's `__getattr__`; `make_callable` turns a package into one that
is also its main function (`memreg.train(config)`, `memreg.compose(base, memories, weights)`): a
package attribute named like a submodule would be replaced by the submodule on import, so the
package itself is made callable instead.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


def load(package: str, table: Mapping[str, str], name: str) -> Any:
    """The public `name` of `package`, imported from the module `table` names for it; AttributeError
    for any other name (which lets `from package import submodule` fall through to the import system)."""
    module = table.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def module_getattr(package: str, table: Mapping[str, str], namespace: dict[str, Any], *,
                   subpackages: tuple[str, ...] = ()) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package` serving `table`'s names (cached in `namespace`, the
    package's globals(), so each loads once) and the `subpackages` by name."""

    def __getattr__(name: str) -> Any:
        if name in subpackages:
            return importlib.import_module(f"{package}.{name}")
        value = load(package, table, name)
        namespace[name] = value
        return value

    return __getattr__


class CallablePackage(types.ModuleType):
    """A lazy package that is also its main function; `make_callable` installs it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, vars(self)["_CALLS"])(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # PEP 562, as a method: the module's class is swapped
        value = load(self.__name__, vars(self).get("_LAZY", {}), name)
        loaded = vars(self).get("_ON_LOAD")
        if loaded is not None:
            loaded()
        setattr(self, name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *vars(self).get("__all__", ())})


def make_callable(package: str, function: str, *, on_load: Callable[[], None] | None = None) -> None:
    """Make the already imported `package` (whose globals hold `_LAZY` and `__all__`) lazy and callable
    as its public `function`; `on_load` runs after each lazily loaded name (e.g. to register classes)."""
    module = sys.modules[package]
    module._CALLS = function  # type: ignore[attr-defined]
    module._ON_LOAD = on_load  # type: ignore[attr-defined]
    module.__class__ = CallablePackage
