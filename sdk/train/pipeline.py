"""`train(config) -> TrainResult`: the stages of a memory decoder's training in order, then the package.

The stage runner (work folder, keys, resume) is `runner.py`; the stage bodies are `stages.py`
(corpus, teacher adaptation, datastore, index, kNN targets) and `memory_stages.py` (init, training
with early stopping, evaluation). This file checks the inputs, runs the stages and writes the card.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memreg.schemas import PackageCard
from memreg.train import corpus as corpus_mod
from memreg.train import memory_stages, stages
from memreg.train.config import PAPER_K, TrainConfig, data_settings, digest, stage_keys
from memreg.core.errors import (
    CorpusTooSmallError,
    EmptyCorpusError,
    InvalidTrainSettingError,
    TokenizerMismatchError,
)
from memreg.train.packaging import CARD_FILE
from memreg.train.progress import TrainProgress
from memreg.train.runner import Meta, StageRunner, claim_work_dir

DEFAULT_BLOCK = 512


@dataclass(frozen=True)
class TrainResult:
    out: Path
    work_dir: Path
    card: PackageCard
    k: int
    temperature: float
    steps: int
    block_size: int
    index: str
    corpus_tokens: int
    eval_tokens: int
    datastore_size: int
    recommended_weight: float | None
    skipped_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        extra = self.card.training.extra if self.card.training else {}
        return {
            "out": str(self.out), "work_dir": str(self.work_dir), "k": self.k, "temperature": self.temperature,
            "steps": self.steps, "block_size": self.block_size, "index": self.index,
            "corpus_tokens": self.corpus_tokens, "eval_tokens": self.eval_tokens,
            "datastore_size": self.datastore_size, "recommended_weight": self.recommended_weight,
            "skipped_files": self.skipped_files, "notes": self.notes, "warnings": self.warnings,
            "wall_seconds": round(self.wall_seconds, 3), "metrics": self.card.metrics.model_dump(mode="json"),
            "validation": extra.get("validation"), "stop_reason": extra.get("stop_reason"),
        }


def train(config: TrainConfig, *, progress: TrainProgress | None = None) -> TrainResult:
    """Build a memory decoder from `config.corpus`; write the package to `config.out`."""
    from memreg.train.distributed import Dist

    t0 = time.monotonic()
    dist = Dist.from_env(config.device)
    run = StageRunner(config, progress or TrainProgress(), dist)
    models = _resolve_models(config)  # 0. before any work: a tokenizer mismatch costs nothing
    corpus = _read_corpus(run)  # 1. read everything once: the digest names the corpus ...
    _key_stages_and_claim_work_dir(run, models, corpus.digest)  # ... and decides whether the work folder is ours
    metas, k = _run_stages(run, models, corpus)  # 2. corpus -> teacher -> datastore -> ... -> eval
    _warn_about_quality(run, metas)
    card = _package(run, models, corpus, metas, k, t0)  # 3. the package folder
    return TrainResult(
        out=Path(config.out), work_dir=run.work, card=card, k=k, temperature=metas["knn"]["temperature"],
        steps=metas["train"]["steps"], block_size=models.block_size, index=metas["index"]["factory"],
        corpus_tokens=metas["corpus"]["train_tokens"], eval_tokens=metas["corpus"]["eval_tokens"],
        datastore_size=metas["datastore"]["rows"], recommended_weight=card.metrics.recommended_weight,
        skipped_files=list(corpus.report.skipped), notes=run.notes, warnings=run.warnings,
        wall_seconds=time.monotonic() - t0,
    )


# ---------------------------------------------------------------------------------------- steps
@dataclass(frozen=True)
class _Models:
    """The teacher and the init as every stage loads them, and what they share."""

    teacher: str  # resolved: a .gguf file is its converted model folder
    init: str
    tokenizer: Any  # the init's, checked equal to the teacher's
    block_size: int
    select_base: str  # resolved --select-base: the base validation mixes the memory with (the teacher by default)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


@dataclass(frozen=True)
class _Corpus:
    """The documents, read once, and the digest that names them (in every stage key)."""

    docs: list[corpus_mod.Document]
    eval_docs: list[corpus_mod.Document] | None  # --eval-corpus; None: held out of `docs`
    report: corpus_mod.CorpusReport
    digest: str


def _resolve_models(config: TrainConfig) -> _Models:
    """A .gguf file becomes a model folder once (cached); a tokenizer mismatch or a block longer than
    a model's context is refused here, before any corpus is read."""
    from transformers import AutoConfig

    from memreg.models import load_tokenizer, resolve_model_ref

    teacher_ref, init_ref = resolve_model_ref(config.teacher), resolve_model_ref(config.init)
    tok, teacher_tok = load_tokenizer(init_ref), load_tokenizer(teacher_ref)
    _check_tokenizers(teacher_tok, tok, config)
    block_size = _block_size(config, AutoConfig, {"teacher": teacher_ref, "init": init_ref})
    select_base = teacher_ref
    if config.select_base is not None:
        select_base = resolve_model_ref(config.select_base)
        _check_select_base(config, load_tokenizer(select_base), tok, AutoConfig.from_pretrained(select_base, trust_remote_code=False),
                           block_size)
    return _Models(teacher=teacher_ref, init=init_ref, tokenizer=tok, block_size=block_size, select_base=select_base)


def _read_corpus(run: StageRunner) -> _Corpus:
    """Every document of the corpus (and of --eval-corpus), with the digest that names them."""
    config = run.cfg
    report = corpus_mod.CorpusReport()
    docs = list(corpus_mod.iter_documents(config.corpus, report))
    if report.skipped:
        run.note(f"skipped {len(report.skipped)} of {report.files} corpus files (binary or not UTF-8): "
                 + ", ".join(report.skipped[:5]) + (" ..." if len(report.skipped) > 5 else ""), warning=True)
    if not docs:
        raise EmptyCorpusError(
            f"the corpus {config.corpus} holds no text ({report.files} files read, {len(report.skipped)} skipped): "
            "give UTF-8 text files, folders, globs, JSONL with a 'text' field, or a save_to_disk dataset"
        )
    eval_docs = _eval_documents(config, report)
    cdigest = corpus_mod.corpus_digest(docs if eval_docs is None else [*docs, *eval_docs])
    if eval_docs is not None:  # the same texts split another way are another corpus
        cdigest = "sha256:" + digest([cdigest, len(docs)])
    return _Corpus(docs=docs, eval_docs=eval_docs, report=report, digest=cdigest)


def _key_stages_and_claim_work_dir(run: StageRunner, models: _Models, cdigest: str) -> None:
    """Key every stage by the corpus, the tokenizer, the models and the settings, and refuse a work
    folder made for others (process 0 checks; the others wait for it)."""
    from memreg.registry.fingerprinting import fingerprint

    tok_digest = fingerprint(models.tokenizer).digest
    identities = {"teacher": _model_identity(models.teacher), "init": _model_identity(models.init)}
    select_base = _model_identity(models.select_base) if run.cfg.select_base is not None else None
    run.keys = stage_keys(run.cfg, corpus_digest=cdigest, tokenizer_digest=digest([tok_digest, identities]),
                          block_size=models.block_size, world_size=run.dist.world_size, select_base=select_base)
    claim = {"corpus_digest": cdigest, "tokenizer": tok_digest, "models": identities,
             "settings": {**data_settings(run.cfg), "block_size": models.block_size}}
    run.main_first(lambda: claim_work_dir(run, claim))


def _run_stages(run: StageRunner, models: _Models, corpus: _Corpus) -> tuple[dict[str, Meta], int]:
    """The stages in order (cached ones are skipped); returns each stage's metadata and the k used."""
    import torch

    block_size, vocab_size = models.block_size, models.vocab_size
    metas: dict[str, Meta] = {
        "corpus": run.main_first(lambda: stages.corpus(run, corpus.docs, models.tokenizer, corpus.eval_docs))}
    rows = metas["corpus"]["train_tokens"] - 1
    if rows < block_size:
        raise CorpusTooSmallError(
            f"the corpus gives {metas['corpus']['train_tokens']} training tokens, fewer than one block of "
            f"{block_size + 1}: add text or lower --block-size"
        )
    k = _resolve_k(run, rows)
    torch.manual_seed(run.cfg.seed)
    metas["teacher"] = stages.teacher(run, block_size, vocab_size, models.teacher)
    metas["datastore"] = stages.datastore(run, block_size, metas["teacher"]["model"])
    metas["index"] = run.main_first(lambda: stages.index(run, metas["datastore"]))
    metas["knn"] = stages.knn(run, k, vocab_size)  # every process searches its share of the rows
    metas["init"] = run.main_first(lambda: memory_stages.init(run, models.init))
    metas["train"] = memory_stages.train(run, block_size, vocab_size, metas["corpus"], metas["init"]["model"],
                                         models.select_base)
    scored, bases = _evaluated_models(run.cfg, models, metas)
    metas["eval"] = memory_stages.evaluate(run, block_size, vocab_size, metas["corpus"], scored, bases)  # all processes
    return metas, k


def _package(run: StageRunner, models: _Models, corpus: _Corpus, metas: dict[str, Meta], k: int,
             t0: float) -> PackageCard:
    """Process 0 writes the package; the others read its card once it is there."""
    if run.dist.is_main:
        card = _write_package(run, models.tokenizer, corpus.digest, metas, models.block_size, k, corpus.report,
                              time.monotonic() - t0)
    run.dist.barrier()
    if not run.dist.is_main:
        card = PackageCard.model_validate_json((Path(run.cfg.out) / CARD_FILE).read_text())
    return card


def _eval_documents(config: TrainConfig, report: corpus_mod.CorpusReport) -> list[corpus_mod.Document] | None:
    if config.eval_corpus is None:
        return None
    docs = list(corpus_mod.iter_documents(config.eval_corpus, report))
    if not docs:
        raise EmptyCorpusError(f"the evaluation corpus {config.eval_corpus} holds no text: give UTF-8 text files, "
                               "folders, globs or JSONL, or leave --eval-corpus out to hold out --eval-fraction of the corpus")
    return docs


# ---------------------------------------------------------------------------------------- checks
def _check_tokenizers(teacher_tok: Any, tok: Any, config: TrainConfig) -> None:
    from memreg.registry.fingerprinting import check_compatible

    compat = check_compatible(teacher_tok, tok, name_a=f"the teacher {config.teacher}", name_b=f"the init model {config.init}")
    if not compat.ok:
        detail = f" ({compat.first_difference})" if compat.first_difference and compat.first_difference not in compat.reason else ""
        raise TokenizerMismatchError(
            f"teacher and init tokenizers differ: {compat.reason}{detail}; the memory decoder must share the teacher's tokenizer"
        )


def _check_select_base(config: TrainConfig, base_tok: Any, tok: Any, base_config: Any, block_size: int) -> None:
    """--select-base must read the memory's token ids, and whole validation blocks. Its context does
    not lower the default block: that would change the datastore, which the base never touches."""
    from memreg.models import context_length
    from memreg.registry.fingerprinting import check_compatible

    compat = check_compatible(base_tok, tok, name_a=f"the selection base {config.select_base}",
                              name_b=f"the init model {config.init}")
    if not compat.ok:
        raise TokenizerMismatchError(
            f"--select-base {config.select_base} cannot be mixed with this memory: {compat.reason}; "
            "name a base with the teacher's tokenizer, or leave --select-base out to use the teacher")
    n = context_length(base_config)
    if n and block_size > n:
        raise InvalidTrainSettingError(
            f"--select-base {config.select_base} reads {n} tokens at most, fewer than the {block_size}-token blocks: "
            f"use --block-size {n} or less, or another base")


def _block_size(config: TrainConfig, auto_config: Any, refs: dict[str, str]) -> int:
    from memreg.models import context_length

    limits = {}
    for role, ref in refs.items():
        if n := context_length(auto_config.from_pretrained(ref, trust_remote_code=False)):
            limits[role] = n
    if config.block_size is None:
        return min([DEFAULT_BLOCK, *limits.values()])
    for role, n in limits.items():
        if config.block_size > n:
            raise InvalidTrainSettingError(
                f"--block-size {config.block_size} is longer than the {role}'s context of {n} tokens: use --block-size {n} or less"
            )
    return config.block_size


def _model_identity(ref: str) -> dict[str, Any]:
    """What names a model's weights without hashing gigabytes: its config and the weight files' sizes."""
    path = Path(ref)
    if not path.is_dir():
        return {"ref": ref}
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.suffix in (".safetensors", ".bin")}
    cfg = path / "config.json"
    return {"config": digest(json.loads(cfg.read_text())) if cfg.exists() else None, "weights": files}


def _resolve_k(run: StageRunner, rows: int) -> int:
    allowed = rows - 1  # every row's neighbours exclude itself
    if run.cfg.k is None:
        k = min(PAPER_K, allowed)
        if k < PAPER_K:
            run.note(f"k lowered from the paper's {PAPER_K} to {k}: the datastore has only {rows} entries")
        return k
    if run.cfg.k > allowed:
        raise InvalidTrainSettingError(
            f"--k {run.cfg.k} is larger than the datastore allows: {rows} entries give at most {allowed} neighbours "
            f"per position; use --k {allowed} or less, or a larger corpus"
        )
    return run.cfg.k


def _evaluated_models(config: TrainConfig, models: _Models,
                      metas: dict[str, Meta]) -> tuple[dict[str, str], dict[str, str]]:
    """Which models the held-out evaluation scores, and which of them are bases the memory is mixed with
    (named as the user gave them): the teacher always; the init too when it is a whole other model
    (a truncated init is no base); the --select-base when it is another model."""
    scored = {"memory": metas["train"]["model"], "teacher": models.teacher, "init": metas["init"]["model"]}
    bases = {"teacher": config.teacher}
    if not metas["init"]["truncated"] and models.init != models.teacher:
        bases["init"] = config.init
    if models.select_base != models.teacher and not ("init" in bases and models.select_base == models.init):
        scored["select_base"] = models.select_base
        bases["select_base"] = str(config.select_base)
    if metas["teacher"]["adapted"]:
        scored["adapted_teacher"] = metas["teacher"]["model"]
    return scored, bases


def _warn_about_quality(run: StageRunner, metas: dict[str, Meta]) -> None:
    train = metas["train"]
    if train["curve"] and train["best_step"] == 0 and train["steps"] > 0:
        on_mixture = train.get("select_on") == "mixture"
        judged, other = ("base + memory", "memory") if on_mixture else ("the memory alone", "mixture")
        run.note(f"no trained checkpoint beat the untrained init on {judged}: the package holds the init; "
                 f"raise --patience or --max-epochs, lower --lr, or try --select-on {other}", warning=True)
    ppl = metas["eval"].get("perplexity", {})
    if not ppl:
        return
    if ppl["memory"] > ppl["init"]:
        run.note(f"the packaged memory alone ({ppl['memory']:.2f} held-out perplexity) is worse than its untrained "
                 f"init ({ppl['init']:.2f}): train longer, lower --lr, or check the corpus", warning=True)
    teacher = ppl.get("adapted_teacher", ppl["teacher"])
    if teacher > ppl["init"]:
        run.note(f"the teacher ({teacher:.2f} held-out perplexity) knows the domain less well than the init "
                 f"({ppl['init']:.2f}): its kNN targets teach little; use a stronger teacher or "
                 "--adapt-teacher-steps", warning=True)


def _write_package(run: StageRunner, tok: Any, cdigest: str, metas: dict[str, Meta], block_size: int, k: int,
                   report: corpus_mod.CorpusReport, wall: float) -> PackageCard:
    from memreg.models import load_causal_lm
    from memreg.train.card import package_card
    from memreg.train.packaging import write_package

    run.progress.stage("package", total=1, unit="pkg")
    model = load_causal_lm(metas["train"]["model"])
    card = package_card(run.cfg, cdigest, metas, block_size=block_size, k=k, skipped=len(report.skipped),
                        warnings=run.warnings, wall=wall)
    validated = write_package(Path(run.cfg.out), model=model, tokenizer=tok, card=card)
    run.progress.advance(1)
    run.progress.end_stage()
    return validated
