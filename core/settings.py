"""Where things live, resolved when asked (never at import time, so tests can point them elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path


def memreg_home() -> Path:
    """$MEMREG_HOME, default ~/.cache/memreg: the local cache and the default registry."""
    env = os.environ.get("MEMREG_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "memreg"


def default_registry_url() -> str:
    """--registry, else $MEMREG_REGISTRY, else a local registry under $MEMREG_HOME."""
    return os.environ.get("MEMREG_REGISTRY") or str(memreg_home() / "registry")


def cache_dir() -> Path:
    return memreg_home() / "cache"


def cards_dir() -> Path:
    """Where publish stages the model cards it renders (beside the cache, never in it)."""
    return memreg_home() / "cards"
