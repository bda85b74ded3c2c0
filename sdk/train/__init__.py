"""memreg.train: the training pipeline (datastore -> index -> kNN targets -> training -> evaluation -> package).

    from memreg.train import TrainConfig, train
    result = train(TrainConfig(corpus=["docs/"], teacher="big", init="small", out="law-memory"))

One module per stage: corpus, datastore, index, knn, loss + trainer, packaging; `pipeline` runs them
with caching and resume. Importing this package is light: the public names load on first use
(importing `memreg.train.config` for a default, as `memreg train`'s options do, does not import the
pipeline, numpy or torch), and torch and faiss load when a stage runs.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memreg.train.config import TrainConfig
    from memreg.train.pipeline import TrainResult, train
    from memreg.train.progress import TrainProgress

__all__ = ["TrainConfig", "TrainProgress", "TrainResult", "train"]

# public name -> the submodule that defines it
_LAZY = {
    "TrainConfig": "memreg.train.config",
    "TrainProgress": "memreg.train.progress",
    "TrainResult": "memreg.train.pipeline",
    "train": "memreg.train.pipeline",
}


class _CallableModule(types.ModuleType):
    """`memreg.train` is this package *and* the function: `memreg.train(config)` runs the pipeline.

    (A package attribute named like a submodule is replaced by the submodule on import, so a lazy
    re-export of the function under the same name would break as soon as `memreg.train.x` loads.)
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, "train")(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # PEP 562, as a method: this module's class is swapped
        module = _LAZY.get(name)
        if module is None:  # AttributeError lets `from memreg.train import corpus` import the submodule
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(self, name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *__all__})


sys.modules[__name__].__class__ = _CallableModule
