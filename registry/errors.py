"""The registry's errors, re-exported from their one home, `memreg.core.errors` (kept so that
`from memreg.registry.errors import …` keeps working)."""

from __future__ import annotations

from memreg.core.errors import BlobNotFoundError as BlobNotFoundError
from memreg.core.errors import ConcurrentUpdateError as ConcurrentUpdateError
from memreg.core.errors import DigestMismatchError as DigestMismatchError
from memreg.core.errors import InvalidArgumentError as InvalidArgumentError
from memreg.core.errors import InvalidReferenceError as InvalidReferenceError
from memreg.core.errors import ManifestError as ManifestError
from memreg.core.errors import ManifestNotFoundError as ManifestNotFoundError
from memreg.core.errors import MemregError as MemregError
from memreg.core.errors import ModelNotFoundError as ModelNotFoundError
from memreg.core.errors import PackageError as PackageError
from memreg.core.errors import RegistryNotFoundError as RegistryNotFoundError
from memreg.core.errors import SafetensorsError as SafetensorsError
from memreg.core.errors import StoreError as StoreError
from memreg.core.errors import TokenizerFileError as TokenizerFileError
from memreg.core.errors import TokenizerMismatchError as TokenizerMismatchError
from memreg.core.errors import UnsupportedFormatError as UnsupportedFormatError
from memreg.core.errors import VersionExistsError as VersionExistsError
from memreg.core.errors import WeightsMismatchError as WeightsMismatchError
from memreg.core.errors import YankedVersionError as YankedVersionError
from memreg.core.errors import first_validation_error as first_validation_error
