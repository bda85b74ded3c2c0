"""Atomic writes and streaming digests, re-exported from `memreg.core.fsutil` (kept so that
`from memreg.registry.fsutil import …` keeps working)."""

from __future__ import annotations

from memreg.core.fsutil import CHUNK as CHUNK
from memreg.core.fsutil import TMP_PREFIX as TMP_PREFIX
from memreg.core.fsutil import atomic_path as atomic_path
from memreg.core.fsutil import atomic_write_bytes as atomic_write_bytes
from memreg.core.fsutil import atomic_write_json as atomic_write_json
from memreg.core.fsutil import atomic_write_text as atomic_write_text
from memreg.core.fsutil import file_digest as file_digest
from memreg.core.fsutil import locked_temp as locked_temp
from memreg.core.fsutil import no_progress as no_progress
from memreg.core.fsutil import remove_if_abandoned as remove_if_abandoned
from memreg.core.fsutil import sha256_file as sha256_file
from memreg.core.fsutil import sha256_stream as sha256_stream
from memreg.core.fsutil import temp_beside as temp_beside
from memreg.core.fsutil import write_temp as write_temp
