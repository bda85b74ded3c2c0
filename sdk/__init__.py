"""memreg: the package manager for LLM memories.

`import memreg` stays light: registry functions and SDK entry points are served lazily
(PEP 562), so `memreg list` never imports torch, transformers or faiss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memreg.core.lazy import module_getattr

__version__ = "0.1.0"

# public name -> module that defines it
# (`memreg.train` and `memreg.compose` are subpackages, each callable as its function:
# memreg.train(config), memreg.compose(base, memories, weights).)
_LAZY: dict[str, str] = {
    "Registry": "memreg.registry",
    "fingerprint": "memreg.registry",
    "check_compatible": "memreg.registry",
    "ComposedForCausalLM": "memreg.compose",
    "CompositionConfig": "memreg.compose",
    "ComposedLM": "memreg.compose",
    "fit_weights": "memreg.compose",
    "save_composition": "memreg.compose",
    "load_composition": "memreg.compose",
    "TrainConfig": "memreg.train",
    "target_log_probs": "memreg.evaluate",
    "perplexity": "memreg.evaluate",
}

if TYPE_CHECKING:  # mirrors _LAZY for type checkers and IDEs
    from memreg import compose
    from memreg.compose import (ComposedForCausalLM, ComposedLM, CompositionConfig, fit_weights, load_composition,
                                save_composition)
    from memreg.evaluate import perplexity, target_log_probs
    from memreg.registry import Registry, check_compatible, fingerprint
    from memreg import train
    from memreg.train import TrainConfig

__all__ = ["__version__", "train", "compose", *_LAZY]

_SUBPACKAGES = ("train", "compose")  # callable subpackages


__getattr__ = module_getattr(__name__, _LAZY, globals(), subpackages=_SUBPACKAGES)


def __dir__() -> list[str]:
    return sorted(__all__)


# AutoConfig / AutoModelForCausalLM open saved compositions once transformers is imported, in either
# import order; this imports neither torch nor transformers (memreg.compose.registration).
from memreg.compose.registration import install as _install_registration  # noqa: E402

_install_registration()
