"""Names, versions and references (`name`, `name@1.2.0`, `name:tag`), checked before any I/O."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from memreg.core.errors import InvalidReferenceError
from memreg.schemas.v1 import NAME_PATTERN, SEMVER_PATTERN

_NAME = re.compile(NAME_PATTERN)
_SEMVER = re.compile(SEMVER_PATTERN)
NAME_RULE = "names are 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
# A version becomes a file name (<version>.json in the registry, <version>-<digest> in the cache):
# bounded well below the 255 bytes a file name may have on every filesystem memreg writes to.
MAX_VERSION_LENGTH = 64


def check_name(name: str, *, what: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidReferenceError(f"{name!r} is not a valid {what}: {NAME_RULE}{_non_ascii(name)}")
    return name


def check_version(version: str, *, name: str | None = None) -> str:
    if isinstance(version, str) and len(version) > MAX_VERSION_LENGTH:
        raise InvalidReferenceError(
            f"version {version[:20]}… is {len(version)} characters long: at most {MAX_VERSION_LENGTH}, "
            f"e.g. {name or 'law'}@1.2.0-rc.1"
        )
    if not isinstance(version, str) or not _SEMVER.fullmatch(version):
        shown = f"{name}@{version}" if name else repr(version)
        raise InvalidReferenceError(
            f"{shown} is not a version: use MAJOR.MINOR.PATCH of ASCII digits 0-9, e.g. {name or 'law'}@1.2.0"
            + _non_ascii(version)
        )
    return version


def _non_ascii(text: object) -> str:
    """Where a look-alike hides ('1.0.1\uff10' reads as 1.0.10): the first non-ASCII character, named."""
    if not isinstance(text, str) or text.isascii():
        return ""
    i, c = next((i, c) for i, c in enumerate(text) if not c.isascii())
    return f" ({c!r}, U+{ord(c):04X} at position {i}, is not ASCII)"


@functools.lru_cache(maxsize=1 << 16)  # `list --all` sorts every version of a registry, some twice
def version_key(version: str) -> tuple:
    """Semantic-version precedence: 1.2.0-rc.1 < 1.2.0 < 1.10.0."""
    m = _SEMVER.fullmatch(version)
    if not m:
        raise InvalidReferenceError(f"{version!r} is not a semantic version")
    core = tuple(int(x) for x in m.groups()[:3])
    pre = m.group(4)
    if pre is None:
        return (*core, 1, ())
    # the pattern admits ASCII digits only, so isdigit() cannot meet '²' (a digit int() refuses)
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (*core, 0, parts)


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of version or tag is set, or neither (highest non-yanked)."""

    name: str
    version: str | None = None
    tag: str | None = None

    def __str__(self) -> str:
        if self.version:
            return f"{self.name}@{self.version}"
        if self.tag:
            return f"{self.name}:{self.tag}"
        return self.name


def parse_ref(ref: str) -> Ref:
    if not isinstance(ref, str) or not ref:
        raise InvalidReferenceError("empty reference: use name, name@1.2.0 or name:tag")
    if "@" in ref and ":" in ref:
        raise InvalidReferenceError(f"{ref!r} is not a reference: use name, name@1.2.0 or name:tag, not both")
    if "@" in ref:
        name, version = ref.split("@", 1)
        return Ref(check_name(name), version=check_version(version, name=name))
    if ":" in ref:
        name, tag = ref.split(":", 1)
        return Ref(check_name(name), tag=check_name(tag, what="tag"))
    return Ref(check_name(ref))
