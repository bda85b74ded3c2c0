"""The root of memreg's errors, re-exported from its one home, `memreg.core.errors` (kept so that
`from memreg.schemas.errors import MemregError` keeps working)."""

from __future__ import annotations

from memreg.core.errors import MemregError as MemregError
from memreg.core.errors import UnsupportedFormatError as UnsupportedFormatError
