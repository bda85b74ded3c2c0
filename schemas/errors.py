"""The root of memreg's errors, at the bottom layer so every layer (schemas, registry, sdk, cli) can
raise errors of one tree: `except MemregError` catches everything memreg raises on purpose."""

from __future__ import annotations


class MemregError(Exception):
    """Root of every error memreg raises on purpose; the CLI prints its message as one line."""


class UnsupportedFormatError(MemregError, ValueError):
    """A document written in a registry format this memreg does not read."""
