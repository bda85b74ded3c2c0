"""Registry format v1.

Everything the registry stores as JSON is one of these models. They are strict (`extra="forbid"`)
so a typo or a field from a newer format is refused instead of silently dropped.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from memreg.schemas.errors import UnsupportedFormatError  # noqa: F401  (raised by readers of documents)

FORMAT_VERSION = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# Semantic versions (semver.org 2.0.0), without build metadata: a version is an identity here.
# [0-9], never \d: Python's re and pydantic's Rust engine both let \d match any Unicode digit, so
# 1.0.9\u0669 would rank as 1.0.99 and 1.0.1\uff10 would pass for 1.0.10.
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?$"
)
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class FileEntry(_Strict):
    """One file of a package, referenced by content (an OCI-style descriptor)."""

    path: str = Field(description="POSIX path relative to the package folder, e.g. model.safetensors")
    digest: str = Field(pattern=DIGEST_PATTERN, description="sha256 of the file body")
    size: int = Field(ge=0, description="size of the file body in bytes")

    @field_validator("path")
    @classmethod
    def _inside_package(cls, value: str) -> str:
        p = PurePosixPath(value)
        if (
            not value
            or value.startswith("/")
            or "\\" in value
            or any(part in ("", ".", "..") for part in value.split("/"))
            or p.is_absolute()
        ):
            raise ValueError(
                f"file path {value!r} escapes the package folder: use a relative path without '..'"
            )
        return value

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


class TokenizerFingerprint(_Strict):
    """What decides the id <-> token mapping, hashed (see memreg.registry.fingerprinting)."""

    algorithm: Literal["memreg-tokenizer-v1"] = "memreg-tokenizer-v1"
    digest: str = Field(pattern=DIGEST_PATTERN, description="sha256 over the canonical JSON of all components")
    vocab_size: int = Field(ge=0, description="len(tokenizer): base vocabulary plus added tokens")
    model_type: str = Field(description="tokenizer model type: BPE, WordPiece, Unigram, WordLevel")
    components: dict[str, str] = Field(
        default_factory=dict,
        description="sha256 of each component (vocab, merges, model, normalizer, pre_tokenizer, special_tokens)",
    )
    special_tokens: dict[str, int] = Field(
        default_factory=dict, description="special-token role -> id, e.g. eos_token -> 0"
    )


class DomainMetadata(_Strict):
    labels: list[str] = Field(default_factory=list, description="domain labels, e.g. ['law', 'licences']")
    language: str | None = Field(default=None, description="BCP-47 language tag of the corpus, e.g. en")
    corpus: str | None = Field(default=None, description="what the corpus is and where it came from")
    license: str | None = Field(default=None, description="licence of the corpus / the memory, SPDX id if any")


class ModelInfo(_Strict):
    architecture: str = Field(description="transformers architecture, e.g. GPT2LMHeadModel")
    model_type: str | None = Field(default=None, description="config.model_type, e.g. gpt2")
    parameter_count: int = Field(ge=0)
    dtype: str = Field(description="dtype of the stored weights, e.g. float32")
    embedding_rows: int = Field(ge=0, description="rows of the output embedding (config.vocab_size)")
    files: list[FileEntry]

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, files: list[FileEntry]) -> list[FileEntry]:
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ValueError("file paths in a manifest must be unique")
        return files


class TrainingProvenance(_Strict):
    teacher_model: str
    init_model: str
    corpus_digest: str = Field(pattern=DIGEST_PATTERN)
    corpus_tokens: int = Field(ge=0)
    datastore_size: int | None = Field(default=None, ge=0)
    index: str | None = Field(default=None, description="faiss index factory string, e.g. Flat or IVF4096,PQ64")
    k: int = Field(ge=1)
    knn_temperature: float = Field(gt=0)
    beta: float = Field(ge=0, le=1, description="loss = beta*KL(p_knn||p_mem) + (1-beta)*CE")
    steps: int = Field(ge=0)
    block_size: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0)
    seed: int
    memreg_version: str
    wall_seconds: float | None = Field(default=None, ge=0)
    extra: dict[str, Any] = Field(default_factory=dict)


class BaseEvaluation(_Strict):
    base: str = Field(description="base model name or path")
    dataset: str = Field(description="what was evaluated, e.g. 'held-out 5% of corpus'")
    tokens: int = Field(ge=0)
    perplexity_base: float = Field(gt=0)
    perplexity_with_memory: float = Field(gt=0)
    weight: float = Field(ge=0, le=1, description="memory weight that gave perplexity_with_memory")
    sweep: dict[str, float] = Field(default_factory=dict, description="weight -> perplexity")


# A router (memreg.router, schemas/router.py) ships in a package as router/router_config.json +
# router/router.safetensors; the manifest lists it in metrics.router.
ROUTER_FOLDER = "router"
ROUTER_CONFIG = "router_config.json"
ROUTER_WEIGHTS = "router.safetensors"
Feature = Literal["entropy", "top1", "agreement", "hidden"]
FEATURES: tuple[str, ...] = ("entropy", "top1", "agreement", "hidden")


class RouterRecord(_Strict):
    """A package's router as its manifest lists it (metrics.router): where it is, what it is for,
    and what it measured against the best fixed weight."""

    config: str = Field(default=f"{ROUTER_FOLDER}/{ROUTER_CONFIG}", description="the config's path in the package")
    base: str = Field(description="the base it was fitted for (name or path)")
    tokenizer: str = Field(pattern=DIGEST_PATTERN, description="that base's tokenizer fingerprint digest")
    hidden_size: int = Field(ge=1)
    features: list[Feature]
    held_out_tokens: int | None = Field(default=None, ge=0)
    perplexity_fixed: float | None = Field(default=None, gt=0)
    perplexity_router: float | None = Field(default=None, gt=0)
    gain: float | None = Field(default=None, gt=0, description="perplexity_fixed / perplexity_router (above 1: the router helps)")


class Metrics(_Strict):
    evaluations: list[BaseEvaluation] = Field(default_factory=list)
    recommended_weight: float | None = Field(default=None, ge=0, le=1)
    router: RouterRecord | None = Field(default=None, description="a router shipped in the package (router/)")

    @model_serializer(mode="wrap")
    def _without_absent_router(self, handler: Any) -> dict[str, Any]:
        """No "router" key when there is none: manifests without one serialize byte for byte as before
        the field existed (their digests and signatures are over those bytes)."""
        data = handler(self)
        if self.router is None:
            data.pop("router", None)
        return data


def _check_format(data: Any) -> Any:
    if isinstance(data, dict) and "format_version" in data:
        v = data["format_version"]
        if v != FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"format_version {v!r} is not supported: this memreg reads format {FORMAT_VERSION}; "
                "upgrade memreg to read newer packages"
            )
    return data


def _check_format_value(value: Any) -> Any:
    _check_format({"format_version": value})
    return value


class _Document(_Strict):
    """A document stored on its own: it says its format first, and a newer format is refused."""

    format_version: Literal[1] = FORMAT_VERSION

    _check = model_validator(mode="before")(_check_format)


class Manifest(_Document):
    """`packages/<name>/<version>.json`: immutable once created."""

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=SEMVER_PATTERN)
    description: str = ""
    created_at: datetime
    memreg_version: str
    domain: DomainMetadata = Field(default_factory=DomainMetadata)
    tokenizer: TokenizerFingerprint
    model: ModelInfo
    training: TrainingProvenance | None = None
    metrics: Metrics = Field(default_factory=Metrics)

    def content_key(self) -> dict[str, Any]:
        """What makes two publications of one version 'the same': everything but when and by which memreg."""
        return self.model_dump(mode="json", exclude={"created_at", "memreg_version"})

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class PackageCard(_Document):
    """`memreg.json` inside a package folder: the author's metadata, all optional.

    A pulled package carries its full manifest as memreg.json; publishing it again reads the
    same fields, so the card accepts every manifest field (and recomputes the derived ones).
    """

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    version: str | None = Field(default=None, pattern=SEMVER_PATTERN)
    description: str | None = None
    domain: DomainMetadata = Field(default_factory=DomainMetadata)
    training: TrainingProvenance | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    # Derived at publish time; accepted so a pulled folder can be re-published, never trusted.
    created_at: datetime | None = None
    memreg_version: str | None = None
    tokenizer: TokenizerFingerprint | None = None
    model: ModelInfo | None = None


class TagPointer(_Document):
    """`packages/<name>/tags/<tag>.json`: mutable, moved by compare-and-swap."""

    name: str = Field(pattern=NAME_PATTERN)
    tag: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=SEMVER_PATTERN)
    updated_at: datetime


class YankRecord(_Document):
    """`packages/<name>/yanked/<version>.json`: hides a version from `name` and `name:latest`."""

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=SEMVER_PATTERN)
    reason: str = ""
    yanked_at: datetime


class VersionSummary(_Strict):
    """What `memreg list` shows of one version, taken from its manifest."""

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=SEMVER_PATTERN)
    description: str = ""
    created_at: datetime
    domain: DomainMetadata = Field(default_factory=DomainMetadata)
    tokenizer: str = Field(description="the tokenizer fingerprint's digest; the whole one is in NameIndex.fingerprints")
    parameter_count: int
    size: int = Field(description="bytes of all files")
    recommended_weight: float | None = None

    @classmethod
    def of(cls, m: Manifest) -> "VersionSummary":
        return cls(name=m.name, version=m.version, description=m.description, created_at=m.created_at, domain=m.domain,
                   tokenizer=m.tokenizer.digest, parameter_count=m.model.parameter_count,
                   size=sum(f.size for f in m.model.files), recommended_weight=m.metrics.recommended_weight)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class IndexedVersion(_Strict):
    """A published version (its summary), or one a publisher announced before creating its manifest."""

    summary: VersionSummary | None = Field(default=None, description="None while pending")
    pending_since: datetime | None = Field(default=None, description="set while the manifest may not exist yet")


class NameIndex(_Strict):
    """`index/<name>.json`: one package's versions, yanks and tags in one document, so `list` costs
    one request per package instead of one per version. A cache the writers keep current by
    compare-and-swap; the manifests, yank records and tag pointers stay the truth, and an index that
    is missing or unreadable is rebuilt from them (see registry/index.py)."""

    format_version: Literal[1] = FORMAT_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    versions: dict[str, IndexedVersion] = Field(default_factory=dict)
    yanked: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    fingerprints: dict[str, TokenizerFingerprint] = Field(default_factory=dict)

    # On the field, not the model: a model "before" validator makes pydantic turn the whole JSON
    # document into Python objects first, which doubled the cost of `list` over 10,000 versions.
    _check = field_validator("format_version", mode="before")(_check_format_value)


class RegistryMarker(_Document):
    """`memreg-registry.json`: the root of a registry, and the format its documents follow."""

    created_at: datetime


class Catalog(_Strict):
    """`index/_catalog.json`: a copy of every package index, so `list` reads one document instead of
    one per package; trusted only where a copy's etag is the index's own (registry/catalog.py)."""

    # Catalogs written before every document carried format_version spell it "format": read either
    # way, written as format_version. A field validator, not a model one: the copies are large text.
    format_version: Literal[1] = Field(FORMAT_VERSION, validation_alias=AliasChoices("format_version", "format"))
    indexes: dict[str, str] = Field(default_factory=dict,
                                    description="package name -> the bytes of index/<name>.json, as text")

    _check = field_validator("format_version", mode="before")(_check_format_value)


class Lease(_Strict):
    """`leases/<id>.json`: blobs a publish in flight relies on; gc keeps them while the lease is
    younger than an hour (by the store's modification time, registry/gc.py)."""

    format_version: Literal[1] = Field(FORMAT_VERSION, description="absent in leases written before it was added")
    created_at: datetime
    blobs: list[str] = Field(description="blob keys, blobs/sha256/<2 hex>/<64 hex>")

    _check = field_validator("format_version", mode="before")(_check_format_value)


def parse_manifest(raw: bytes | str) -> Manifest:
    """Parse and validate a manifest document (raises ValueError subclasses on bad input)."""
    return Manifest.model_validate_json(raw)
