"""memreg.compose: a base causal LM and its memories as one transformers model.

    import memreg
    lm = memreg.compose("base-folder", ["law@1.0.0"], [0.3])      # a ComposedForCausalLM
    lm.generate(**tok("The licensee", return_tensors="pt"), max_new_tokens=20)
    lm.save_pretrained("law-mix")                                  # config.json: references, no weights
    AutoModelForCausalLM.from_pretrained("law-mix")                # after `import memreg`

Modules, each with one job (none imports another in a circle; tests/unit/test_import_graph.py):
members    one member's forward keywords, rows, positions and log-probabilities
config     CompositionConfig: the members by reference, the weights (config.json)
cache      ComposedCache: each member's own KV cache, as one transformers Cache
model      ComposedForCausalLM: forward = the mixture's log-probabilities; transformers' generate
sources    where a memory comes from (registry, folder, Hub, PEFT adapter), before loading
assemble   check tokenizers and signatures, settle weights, load the members once
scoring    per-member log-probabilities of held-out text; EM weights (fit_weights)
build      compose(), save_composition(), load_composition()
registration  AutoConfig / AutoModelForCausalLM registration, without making `import memreg` heavy

Importing this package is light: the public names load on first use. `memreg.compose` is also
callable, `memreg.compose(base, memories, weights)` being `memreg.compose.build.compose`: a package
attribute named like the package would be replaced by the submodule on import, so the package
itself is the function, in every import order.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from memreg.core.lazy import make_callable

if TYPE_CHECKING:
    from memreg.compose.assemble import BaseSpec, DigestMismatchError, MemorySpec, parse_memory_spec
    from memreg.compose.build import compose, load_composition, save_composition
    from memreg.compose.cache import ComposedCache
    from memreg.compose.config import CompositionConfig
    from memreg.compose.model import ComposedForCausalLM, ComposedLM
    from memreg.compose.scoring import encode_documents, fit_weights, member_target_log_probs
    from memreg.core.errors import (AdapterWeightsMismatchError, CompositionFileError, ContextTooLongError,
                                    ManifestDigestChangedError, MemoryNotFoundError, MissingWeightError)
    from memreg.fit import FittedWeights

# public name -> the submodule that defines it
_LAZY = {
    "compose": "memreg.compose.build",
    "save_composition": "memreg.compose.build",
    "load_composition": "memreg.compose.build",
    "ComposedForCausalLM": "memreg.compose.model",
    "ComposedLM": "memreg.compose.model",
    "ContextTooLongError": "memreg.core.errors",
    "CompositionConfig": "memreg.compose.config",
    "CompositionFileError": "memreg.core.errors",
    "ComposedCache": "memreg.compose.cache",
    "fit_weights": "memreg.compose.scoring",
    "member_target_log_probs": "memreg.compose.scoring",
    "encode_documents": "memreg.compose.scoring",
    "FittedWeights": "memreg.fit",
    "parse_memory_spec": "memreg.compose.assemble",
    "MissingWeightError": "memreg.core.errors",
    "ManifestDigestChangedError": "memreg.core.errors",
    "DigestMismatchError": "memreg.compose.assemble",  # the old name of ManifestDigestChangedError
    "BaseSpec": "memreg.compose.assemble",
    "MemorySpec": "memreg.compose.assemble",
    "MemoryNotFoundError": "memreg.core.errors",
    "AdapterWeightsMismatchError": "memreg.core.errors",
}

__all__ = sorted(_LAZY)


def _register() -> None:
    """Register the composition classes with transformers' Auto classes once a public name loads."""
    importlib.import_module("memreg.compose.registration").ensure_registered()


# `memreg.compose` is this package *and* the function `compose`.
make_callable(__name__, "compose", on_load=_register)
