"""memreg.router: per-token mixture weights over [base, memories...], fitted on validation text.

    from memreg.router import fit_router, save_router, load_router
    fitted = fit_router(composed, validation_text)            # started at the EM fixed weights
    fitted.gain                                               # fixed-weight / router perplexity, held out
    save_router(fitted.router, "law/router")                  # router_config.json + router.safetensors
    composed.set_router(load_router("law/router"))            # refused for another base

Modules: features (what the router reads per position), model (the MLP), io (save, load, the
binding to a base), fitting (collect, train, measure). Light to import: names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memreg.core.lazy import module_getattr

_LAZY = {
    "Router": "memreg.router.model",
    "RouterInputs": "memreg.router.features",
    "position_inputs": "memreg.router.features",
    "save_router": "memreg.router.io",
    "load_router": "memreg.router.io",
    "read_router_config": "memreg.router.io",
    "check_router": "memreg.router.io",
    "fit_router": "memreg.router.fitting",
    "FittedRouter": "memreg.router.fitting",
    "RouterConfig": "memreg.schemas.router",
    "RouterFileError": "memreg.core.errors",
    "RouterMismatchError": "memreg.core.errors",
}

if TYPE_CHECKING:
    from memreg.core.errors import RouterFileError, RouterMismatchError
    from memreg.router.features import RouterInputs, position_inputs
    from memreg.router.fitting import FittedRouter, fit_router
    from memreg.router.io import check_router, load_router, read_router_config, save_router
    from memreg.router.model import Router
    from memreg.schemas.router import RouterConfig

__all__ = sorted(_LAZY)

__getattr__ = module_getattr(__name__, _LAZY, globals())
