"""Named errors of the registry. Each also inherits the builtin a generic handler would catch."""

from __future__ import annotations


from memreg.schemas.errors import MemregError, UnsupportedFormatError  # noqa: F401  (the root lives below)


class InvalidReferenceError(MemregError, ValueError):
    """A name, version, tag or reference that breaks the naming rules (refused before any I/O)."""


class InvalidArgumentError(MemregError, ValueError):
    """An option value out of its range (e.g. a negative or NaN gc grace), refused before any I/O."""


class PackageError(MemregError, ValueError):
    """A package folder that cannot be published as it is."""


class SafetensorsError(PackageError):
    """A .safetensors file whose header does not parse or does not describe its tensors."""


class TokenizerFileError(PackageError):
    """A tokenizer file (tokenizer.json, vocab.json, …) that is not what Hugging Face writes."""


class WeightsMismatchError(PackageError):
    """Weights that do not match the model's config: missing or unexpected tensors, wrong shapes.
    Never filled with a random init."""


class ManifestError(MemregError, ValueError):
    """A stored or local manifest that does not parse or validate."""


class ManifestNotFoundError(MemregError, FileNotFoundError):
    """No such package, version or tag in the registry."""


class VersionExistsError(MemregError, FileExistsError):
    """The version is already published with different content; versions are immutable."""


class DigestMismatchError(MemregError, ValueError):
    """A blob whose bytes do not hash to the digest (or size) that references it."""

    def __init__(self, message: str, *, digest: str = "", path: str = "") -> None:
        super().__init__(message)
        self.digest = digest
        self.path = path


class BlobNotFoundError(MemregError, FileNotFoundError):
    """A manifest references a blob the store does not hold (lost, or never uploaded)."""

    def __init__(self, message: str, *, digest: str = "", path: str = "") -> None:
        super().__init__(message)
        self.digest = digest
        self.path = path


class YankedVersionError(MemregError, ValueError):
    """A tag asked to point at a yanked version (refused unless forced)."""


class ConcurrentUpdateError(MemregError, RuntimeError):
    """A compare-and-swap lost the race: somebody else changed the pointer first."""


class RegistryNotFoundError(MemregError, FileNotFoundError):
    """The URL holds no memreg registry (run `memreg init URL`)."""


class ModelNotFoundError(MemregError, FileNotFoundError):
    """A model reference that can only be a local path names nothing on disk."""


class StoreError(MemregError, OSError):
    """The storage backend failed in a way memreg cannot recover from."""


class TokenizerMismatchError(MemregError, ValueError):
    """Two tokenizers that do not map ids to the same tokens."""


def first_validation_error(e: Exception) -> str:
    """The first problem of a pydantic ValidationError as `location: message` (one line)."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "document"
        return f"{loc}: {first.get('msg')}"
    return str(e).splitlines()[0]
