"""Pydantic models of the memreg registry format (the truth about what is stored).

One module per released format version; `Manifest` always names the newest.
"""

from memreg.schemas.v1 import (
    FORMAT_VERSION,
    NAME_PATTERN,
    BaseEvaluation,
    Catalog,
    DomainMetadata,
    FileEntry,
    Manifest,
    Metrics,
    IndexedVersion,
    Lease,
    ModelInfo,
    NameIndex,
    PackageCard,
    RegistryMarker,
    TagPointer,
    TokenizerFingerprint,
    TrainingProvenance,
    UnsupportedFormatError,
    VersionSummary,
    YankRecord,
    parse_manifest,
)

__all__ = [
    "FORMAT_VERSION",
    "NAME_PATTERN",
    "BaseEvaluation",
    "Catalog",
    "DomainMetadata",
    "FileEntry",
    "Manifest",
    "Metrics",
    "IndexedVersion",
    "Lease",
    "ModelInfo",
    "NameIndex",
    "PackageCard",
    "RegistryMarker",
    "TagPointer",
    "TokenizerFingerprint",
    "TrainingProvenance",
    "UnsupportedFormatError",
    "VersionSummary",
    "YankRecord",
    "parse_manifest",
]
