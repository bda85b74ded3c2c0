"""`CompositionConfig`: a composition as transformers sees it, written as config.json.

It holds references, never weights: the base and each memory as one of
    {"path": "/abs/path"}                     a model or package folder, or a .gguf file (absolute when saved),
    {"hub": "org/name"}                       a Hugging Face Hub repository,
    {"registry": "law@1.0.0", "digest": ...}  an exact registry version and its manifest's digest,
    {"adapter": "/abs/path"}                  a saved PEFT adapter folder (memories only),
plus the registry URL, one weight per memory, the vocabulary the members share and the context the
smallest member holds. A relative folder (only a hand-edited file has one) is resolved against the
folder the config was read from, never against the current directory.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PretrainedConfig

from memreg.core.errors import CompositionFileError

MODEL_TYPE = "memreg_composition"
REFERENCE_KINDS = ("path", "hub", "registry", "adapter")


class CompositionConfig(PretrainedConfig):
    """The members of a composition by reference, and the weights (see the module docstring)."""

    model_type = MODEL_TYPE

    base: dict | None = None
    memories: list | None = None
    weights: list | None = None
    names: list | None = None
    registry: str | None = None
    vocab_size: int | None = None
    max_position_embeddings: int | None = None
    memreg_format: int = 1
    router: str | None = None  # a router saved beside the composition: the folder's name (router/)

    def check(self, where: str = "this composition") -> None:
        """Refuse a config that cannot be rebuilt, naming what is wrong (weights are checked when the model takes them)."""
        if self.memreg_format != 1:
            raise CompositionFileError(f"{where} has memreg_format {self.memreg_format!r}: this memreg reads 1")
        refs = [("base", self.base)] + [(f"memories[{i}]", m) for i, m in enumerate(self.memories or [])]
        for label, ref in refs:
            kinds = [k for k in REFERENCE_KINDS if isinstance(ref, dict) and k in ref]
            if len(kinds) != 1 or (label == "base" and kinds[0] == "adapter"):
                raise CompositionFileError(f"{where} is not a composition file: {label} is {ref!r}; give one of "
                                           + ", ".join(f'{{"{k}": ...}}' for k in REFERENCE_KINDS))
        if self.router is not None and (not isinstance(self.router, str) or self.router in ("", ".", "..")
                                        or "/" in self.router or "\\" in self.router):
            raise CompositionFileError(f"{where}: router {self.router!r} is not a folder name beside config.json")
        if len(self.weights or []) != len(self.memories or []):
            raise CompositionFileError(f"{where}: {len(self.memories or [])} memories but {len(self.weights or [])} weights")


def reference_text(ref: dict, folder: Path | None) -> str:
    """The reference as compose() takes it: a folder resolved against `folder` (the config's), a Hub
    id or an exact registry version. A relative folder without a config folder is refused."""
    kind = next(k for k in REFERENCE_KINDS if k in ref)
    value = str(ref[kind])
    if kind in ("path", "adapter"):
        path = Path(value).expanduser()
        if not path.is_absolute():
            if folder is None:
                raise CompositionFileError(f"the reference {ref!r} is a relative folder, and the composition was not "
                                           "read from a folder to resolve it against: write an absolute path")
            path = (folder / path).resolve()
        return str(path)
    return value
