"""Where things live, re-exported from `memreg.core.settings` (kept so that
`from memreg.registry.settings import …` keeps working)."""

from __future__ import annotations

from memreg.core.settings import cache_dir as cache_dir
from memreg.core.settings import cards_dir as cards_dir
from memreg.core.settings import default_registry_url as default_registry_url
from memreg.core.settings import memreg_home as memreg_home
