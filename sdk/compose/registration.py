"""Registering the composition with transformers' Auto classes, without making `import memreg` heavy.

`AutoConfig.from_pretrained(folder)` and `AutoModelForCausalLM.from_pretrained(folder)` find
`CompositionConfig` / `ComposedForCausalLM` by the config's model_type once they are registered,
so no `trust_remote_code` is involved. Registering needs torch and transformers, which `import
memreg` must not import (the registry commands never load them). So:
- `memreg.compose.model` registers itself when it is imported;
- `import memreg` calls `install()`: if transformers is already imported, the model module is
  imported now (and registers); otherwise a one-shot import hook waits for `import transformers`
  to finish and imports it then. Either import order ends registered.

This module imports nothing heavy; it names the model module only as a string.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

MODEL_MODULE = "memreg.compose.model"


def register_auto(config_class: type, model_class: type) -> None:
    """AutoConfig + AutoModelForCausalLM (idempotent). The pipelines' model check reads the names
    table, not the registry, so the class name is added there too: without it, a text-generation
    pipeline logs that the model "is not supported" although it runs."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto import modeling_auto

    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
    modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(config_class.model_type, model_class.__name__)


def _busy() -> bool:
    """A composition module is half-imported (it imported transformers first): importing the model
    module now would read it half-done. The import under way registers instead, when it reaches
    the model module (every public path to the composition does; `memreg.compose` makes sure)."""
    return any(getattr(getattr(m, "__spec__", None), "_initializing", False)
               for name, m in list(sys.modules.items()) if name.startswith("memreg.compose.") and m is not None)


def ensure_registered() -> None:
    """Import the model module (which registers) if it is not imported yet and nothing is half-done."""
    if MODEL_MODULE not in sys.modules and not _busy():
        _import_model_module()


def _import_model_module() -> None:
    if MODEL_MODULE in sys.modules or _busy():  # being imported right now: it registers at its end
        return
    try:
        importlib.import_module(MODEL_MODULE)
    except Exception as e:  # noqa: BLE001 - never break the user's `import transformers`
        warnings.warn(f"memreg could not register its composition with transformers' Auto classes ({e}); "
                      "import memreg.compose.model to see why", ImportWarning, stacklevel=2)


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the top-level `transformers` package so that, once
    its module has run, the composition is registered. Removed after its first use."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenRegister(spec.loader)
                return spec
        return None


class _ThenRegister(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        _import_model_module()

    def __getattr__(self, name: str) -> Any:  # resource readers, is_package, …: the real loader's
        return getattr(self.loader, name)


def install() -> None:
    """Register now if transformers is imported, else when it is (see the module docstring)."""
    if "transformers" in sys.modules:
        if importlib.util.find_spec("torch") is not None:
            _import_model_module()
        return
    if not any(isinstance(f, _AfterTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformers())
