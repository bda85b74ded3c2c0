"""TrainConfig: every setting of `memreg train`, and the cache keys derived from it.

Defaults follow the paper (Cao et al. 2025) and its reference code where they fit a CPU:
k = 1024 neighbours, beta = 0.5 (half KL to the kNN distribution, half cross-entropy), AdamW with a
linear schedule. The kNN temperature defaults to "auto": chosen on a sample of the datastore
(leave-one-out likelihood of the true next token), because faiss returns squared L2 distances
whose scale depends on the teacher (the reference code's T = 1 only suits its GPT2-xl keys).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memreg.train.defaults import DEFAULT_LR, DEFAULT_MAX_EPOCHS, DEFAULT_SELECT_ON, PAPER_K  # noqa: F401 - re-exported

# Settings that decide the artifacts of each stage (a stage's key also covers the stages before it).
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "corpus": ("eval_corpus", "eval_fraction", "seed"),
    "teacher": ("teacher", "adapt_teacher_steps", "adapt_teacher_lr", "block_size", "batch_size", "seed"),
    "datastore": ("teacher", "block_size"),
    "index": ("index", "search", "nprobe", "recall_goal", "memory_budget_mb", "flat_max_keys", "index_on_disk"),
    "knn": ("k", "temperature", "knn_support"),
    "init": ("init", "init_layers"),
    "train": (
        "init", "beta", "steps", "epochs", "lr", "batch_size", "grad_accum",
        "warmup_fraction", "weight_decay", "seed", "max_epochs", "patience", "eval_every", "val_tokens",
        "select_on", "select_base",
    ),
    "eval": ("weight_grid", "eval_stride"),
}
STAGES = tuple(STAGE_SETTINGS)
# Stages whose artifacts runs may share: a work folder holds one corpus and datastore, and any number
# of trainings on it (each in its own train-<key>/ folder), so a sweep over --lr or --beta reuses it.
DATA_STAGES = ("corpus", "teacher", "datastore", "index", "knn")


class TrainConfig(BaseModel):
    """What to train, from what, and how. Paths are kept as given; models are ids or folders."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    corpus: list[str] = Field(min_length=1, description="files, folders, globs, JSONL, or a save_to_disk dataset")
    teacher: str = Field(description="LM whose last_ffn_input keys build the datastore")
    init: str = Field(description="small LM of the same tokenizer the memory decoder starts from")
    init_layers: int | None = Field(default=None, ge=1, description="start from the first N blocks of --init (plus its embeddings, final norm and LM head)")
    out: Path = Field(description="package folder to write")
    work_dir: Path | None = Field(default=None, description="cache of the stages; default <out>.work next to out")
    # package metadata (does not change any artifact)
    name: str | None = None
    version: str | None = None
    description: str | None = None
    domain: list[str] = Field(default_factory=list)
    language: str | None = None
    corpus_description: str | None = None
    license: str | None = None
    # 1. corpus
    eval_corpus: list[str] | None = Field(default=None, description="held-out documents for early stopping and the card's metrics; default: --eval-fraction of the corpus")
    eval_fraction: float = Field(default=0.05, ge=0, lt=1)
    # 1b. domain-adapted teacher (the paper's datastore comes from a teacher fine-tuned on the domain)
    adapt_teacher_steps: int = Field(default=0, ge=0, description="fine-tune a copy of the teacher with CE on the training split for this many steps before the datastore; 0 = off")
    adapt_teacher_lr: float = Field(default=3e-4, gt=0, description="peak AdamW learning rate of the teacher adaptation")
    # 2. datastore
    block_size: int | None = Field(default=None, ge=2, description="default: min(512, the models' context)")
    teacher_batch_size: int = Field(default=8, ge=1)
    # 3. index
    index: str = Field(default="auto", description="'auto' or a faiss factory string, e.g. Flat, IVF1024,Flat, IVF4096,PQ64")
    search: Literal["auto", "faiss", "torch"] = Field(
        default="auto", description="kNN search: faiss index, or exact torch search (blocks of keys, running top-k); auto = torch on CUDA")
    nprobe: int | None = Field(default=None, ge=1, description="IVF lists searched; default: the smallest power of two reaching --recall-goal")
    recall_goal: float = Field(default=0.9, gt=0, le=1, description="IVF: recall@k of the exact neighbours the default nprobe must reach (on a sample)")
    memory_budget_mb: int = Field(default=4096, ge=1, description="exact search while float32 keys fit in this")
    flat_max_keys: int = Field(default=50_000, ge=1, description="auto: above this many keys, IVF even if it fits")
    index_on_disk: bool | None = Field(
        default=None, description="IVF: inverted lists in a file beside the index (faiss OnDiskInvertedLists), memory-mapped when searched; default: only when they would not fit the memory budget")
    # 4. kNN targets
    k: int | None = Field(default=None, ge=1, description="default: the paper's 1024, lowered to fit a small datastore")
    temperature: float | Literal["auto"] = "auto"
    knn_support: int = Field(default=64, ge=1, description="tokens kept per position in the sparse p_kNN")
    search_batch_size: int = Field(default=1024, ge=1)
    # 5. training
    beta: float = Field(default=0.5, ge=0, le=1)
    steps: int | None = Field(default=None, ge=1, description="fixed length; default: stop on the validation loss")
    epochs: float | None = Field(default=None, gt=0, description="fixed length in passes; default: stop on the validation loss")
    max_epochs: float = Field(default=DEFAULT_MAX_EPOCHS, gt=0, description="cap of the early-stopped run (the schedule decays to 0 there)")
    patience: int = Field(default=3, ge=1, description="evaluations without improvement before stopping")
    eval_every: int | None = Field(default=None, ge=1, description="optimizer steps between evaluations; default: twice an epoch")
    val_tokens: int = Field(default=16_384, ge=2, description="held-out tokens scored at each evaluation")
    max_minutes: float | None = Field(default=None, gt=0, description="stop training after this long (this invocation), keep the best")
    select_on: Literal["memory", "mixture"] = Field(
        default=DEFAULT_SELECT_ON, description="what early stopping and the packaged checkpoint follow: the memory's validation loss, or base + memory's at its best weight")
    select_base: str | None = Field(default=None, description="the base of --select-on mixture (and of the curve's mixture field); default: the teacher")
    lr: float = Field(default=DEFAULT_LR, gt=0)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1, description="of the schedule's length; at least 1 step")
    weight_decay: float = Field(default=0.0, ge=0)
    checkpoint_every: int = Field(default=100, ge=1)
    seed: int = 0
    # 6. evaluation
    weight_grid: list[float] = Field(default_factory=lambda: [i / 20 for i in range(21)])
    eval_stride: int | None = Field(default=None, ge=1, description="default: half the block")
    # runtime only
    device: str = "cpu"

    @field_validator("corpus", "eval_corpus")
    @classmethod
    def _strings(cls, v: Sequence[Any] | None) -> list[str] | None:
        return None if v is None else [str(x) for x in v]

    @field_validator("temperature")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if v != "auto" and not v > 0:
            raise ValueError(f"temperature {v!r} must be > 0 or 'auto'")
        return v

    @field_validator("weight_grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 <= w <= 1 for w in v):
            raise ValueError(f"weight grid {v} must be non-empty, each weight in [0, 1]")
        return sorted(set(float(w) for w in v))

    def resolved_work_dir(self) -> Path:
        return Path(self.work_dir) if self.work_dir is not None else Path(str(self.out) + ".work")

    def settings(self, stages: Sequence[str] = STAGES) -> dict[str, Any]:
        """Every setting that changes an artifact of `stages` (by default all of them)."""
        keys = [s for stage in stages for s in STAGE_SETTINGS[stage]]
        return {k: _jsonable(getattr(self, k)) for k in dict.fromkeys(keys)}


def data_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings a shared work folder must match: those of DATA_STAGES that change their artifacts
    (the split's fraction does not when --eval-corpus gives the split; the teacher's training settings
    do not when it is not adapted). The seed always does: the index and the kNN temperature sample."""
    out = config.settings(DATA_STAGES)
    if config.eval_corpus is not None:
        out.pop("eval_fraction")
    if not config.adapt_teacher_steps:
        out.pop("adapt_teacher_lr")
        out.pop("batch_size")
    if config.index_on_disk is None:  # the default: work folders made before the option stay valid
        out.pop("index_on_disk")
    return out


def _selection_key(own: dict[str, Any], select_base: Any) -> None:
    """Runs judged on the memory's loss against the teacher keep the keys made before --select-on."""
    if own["select_on"] == "memory":
        own.pop("select_on")
    if own["select_base"] is None:
        own.pop("select_base")
    elif select_base is not None:
        own["select_base"] = select_base


def _jsonable(v: Any) -> Any:
    return str(v) if isinstance(v, Path) else v


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def stage_keys(config: TrainConfig, *, corpus_digest: str, tokenizer_digest: str, block_size: int,
               world_size: int = 1, select_base: Any = None) -> dict[str, str]:
    """One key per stage: a hash of its own settings and of the key of the stage before it.
    Data-parallel training over several processes takes larger steps: another key. `select_base`
    names the weights of a --select-base folder (the ref alone does not)."""
    keys: dict[str, str] = {}
    previous = digest({"corpus": corpus_digest, "tokenizer": tokenizer_digest})
    for stage, names in STAGE_SETTINGS.items():
        own = {n: _jsonable(getattr(config, n)) for n in names}
        if stage in ("teacher", "datastore"):
            own["block_size"] = block_size
        if stage == "corpus" and config.eval_corpus is not None:  # a given split: the fraction does nothing
            own = {"eval_corpus": "given", "seed": config.seed}  # the documents are in the corpus digest
        if stage == "teacher" and not config.adapt_teacher_steps:  # off: the key does not depend on how it would run
            own = {"teacher": own["teacher"], "adapt_teacher_steps": 0}
        elif stage in ("teacher", "train") and world_size > 1:
            own["world_size"] = world_size
        if stage == "index" and config.index_on_disk is None:  # the default keeps the keys made before the option
            own.pop("index_on_disk")
        if stage == "train":
            _selection_key(own, select_base)
        previous = keys[stage] = digest({"previous": previous, "stage": stage, **own})
    return keys
