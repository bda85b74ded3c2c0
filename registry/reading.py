"""Reading documents other processes wrote: parse and check them, and warn (once) about stray
entries instead of failing for every user of the registry."""

from __future__ import annotations

import logging
from typing import Any

from memreg.core.errors import InvalidReferenceError, ManifestError, first_validation_error
from memreg.registry.package import files_problem
from memreg.schemas import Manifest

log = logging.getLogger("memreg.registry")
_warned: set[str] = set()


def warn(message: str) -> None:
    """A stray or malformed entry: said once on stderr (logging's last-resort handler prints
    warnings when nothing is configured), never fatal for the rest of the registry. Once per
    process: one command reads the same entry several times."""
    if message not in _warned:
        _warned.add(message)
        log.warning("warning: %s", message)


def valid(check: Any, value: str, where: str, what: str) -> bool:
    try:
        check(value)
        return True
    except InvalidReferenceError:
        warn(f"{where}: {what}; ignored")
        return False


def parse(model: Any, raw: bytes, where: str) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValueError as e:
        raise ManifestError(f"{where} is not a valid {model.__name__}: {first_validation_error(e)}") from e


def checked_manifest(raw: bytes, name: str, version: str, where: str) -> Manifest:
    """The manifest stored for name@version, refused unless it names that very package and version
    and lists files memreg could have published (see files_problem)."""
    m = parse(Manifest, raw, where)
    if (m.name, m.version) != (name, version):
        raise ManifestError(f"{where} holds {m.name}@{m.version}, not {name}@{version}: a manifest must sit at "
                            f"packages/<name>/<version>.json; it is ignored")
    if problem := files_problem([e.path for e in m.model.files]):
        raise ManifestError(f"{where} lists {problem}; the manifest was not written by memreg publish and is ignored")
    return m
