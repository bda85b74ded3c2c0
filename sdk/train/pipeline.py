"""`train(config) -> TrainResult`: the seven stages of DESIGN.md, one function each.

Each stage writes into `<work_dir>/<stage>-<key>/`, where key hashes the stage's settings and the
key of the stage before (so the corpus, the tokenizer and the models are in every key), and marks
itself done by writing `meta.json` last. A re-run skips finished stages and resumes the
unfinished one. A work folder made for another corpus or other settings is refused (`run.json`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memreg.schemas import PackageCard
from memreg.train import corpus as corpus_mod
from memreg.train.config import PAPER_K, TrainConfig, digest, stage_keys
from memreg.train.errors import (
    CorpusTooSmallError,
    EmptyCorpusError,
    InvalidTrainSettingError,
    TokenizerMismatchError,
    WorkDirMismatchError,
)
from memreg.train.progress import TrainProgress

if TYPE_CHECKING:
    from memreg.train.distributed import Dist

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
    wall_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "work_dir": str(self.work_dir), "k": self.k, "temperature": self.temperature,
            "steps": self.steps, "block_size": self.block_size, "index": self.index,
            "corpus_tokens": self.corpus_tokens, "eval_tokens": self.eval_tokens,
            "datastore_size": self.datastore_size, "recommended_weight": self.recommended_weight,
            "skipped_files": self.skipped_files, "notes": self.notes, "wall_seconds": round(self.wall_seconds, 3),
            "metrics": self.card.metrics.model_dump(mode="json"),
        }


class _Run:
    """State shared by the stages of one run."""

    def __init__(self, config: TrainConfig, progress: TrainProgress, dist: Dist) -> None:
        self.dist = dist
        self.cfg, self.progress = config, progress if dist.is_main else TrainProgress()  # one process draws
        self.device = dist.device(config.device)
        self.work = config.resolved_work_dir()
        self.notes: list[str] = []

    def note(self, message: str, *, warning: bool = False) -> None:
        self.notes.append(message)
        self.progress.note(message, warning=warning)

    def stage_dir(self, stage: str) -> Path:
        return self.work / f"{stage}-{self.keys[stage][:12]}"

    def cached(self, stage: str) -> dict[str, Any] | None:
        meta = self.stage_dir(stage) / "meta.json"
        return json.loads(meta.read_text()) if meta.exists() else None

    def main_first(self, fn: Any) -> Any:
        """Process 0 runs `fn` (a stage); the others wait, then run it too and find it cached."""
        result = fn() if self.dist.is_main else None
        self.dist.barrier()
        return result if self.dist.is_main else fn()

    def shared(self, stage: str, meta: dict[str, Any] | None) -> dict[str, Any]:
        """After a stage all processes ran: process 0 has written `meta`; the others read it."""
        self.dist.barrier()
        if self.dist.is_main:
            assert meta is not None
            return meta
        cached = self.cached(stage)
        assert cached is not None, f"process 0 did not finish stage {stage}"
        return cached

    def finish(self, stage: str, meta: dict[str, Any]) -> dict[str, Any]:
        path = self.stage_dir(stage) / "meta.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": self.keys[stage], **meta}, indent=1))
        os.replace(tmp, path)
        return meta


def train(config: TrainConfig, *, progress: TrainProgress | None = None) -> TrainResult:
    """Build a memory decoder from `config.corpus`; write the package to `config.out`."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from memreg.train.distributed import Dist

    t0 = time.monotonic()
    dist = Dist.from_env(config.device)
    run = _Run(config, progress or TrainProgress(), dist)
    # 0. refuse a tokenizer mismatch before any work
    tok = AutoTokenizer.from_pretrained(config.init, trust_remote_code=False)
    teacher_tok = AutoTokenizer.from_pretrained(config.teacher, trust_remote_code=False)
    _check_tokenizers(teacher_tok, tok, config)
    vocab_size = len(tok)
    block_size = _block_size(config, AutoConfig)
    # 1. corpus: read everything once (the digest names the corpus), then check the work folder
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
    cdigest = corpus_mod.corpus_digest(docs)
    from memreg.registry.fingerprinting import fingerprint

    tok_digest = fingerprint(tok).digest
    models = {"teacher": _model_identity(config.teacher), "init": _model_identity(config.init)}
    run.keys = stage_keys(config, corpus_digest=cdigest, tokenizer_digest=digest([tok_digest, models]),
                          block_size=block_size, world_size=dist.world_size)
    run.main_first(lambda: _claim_work_dir(run, cdigest, tok_digest, models, block_size))

    cmeta = run.main_first(lambda: _stage_corpus(run, docs, tok))
    rows = cmeta["train_tokens"] - 1
    if rows < block_size:
        raise CorpusTooSmallError(
            f"the corpus gives {cmeta['train_tokens']} training tokens, fewer than one block of {block_size + 1}: "
            "add text or lower --block-size"
        )
    k = _resolve_k(run, rows)
    torch.manual_seed(config.seed)
    ameta = _stage_teacher(run, block_size, vocab_size)
    dmeta = _stage_datastore(run, block_size, ameta["model"])
    imeta = run.main_first(lambda: _stage_index(run, dmeta))
    kmeta = run.main_first(lambda: _stage_knn(run, k, vocab_size))
    tmeta = _stage_train(run, block_size, vocab_size, cmeta)
    emeta = run.main_first(lambda: _stage_eval(run, block_size, vocab_size, cmeta))
    if dist.is_main:
        card = _stage_package(run, tok, cdigest, cmeta, ameta, dmeta, imeta, kmeta, tmeta, emeta, block_size, k,
                              report, time.monotonic() - t0)
    dist.barrier()
    if not dist.is_main:
        card = PackageCard.model_validate_json((Path(config.out) / "memreg.json").read_text())
    return TrainResult(
        out=Path(config.out), work_dir=run.work, card=card, k=k, temperature=kmeta["temperature"],
        steps=tmeta["steps"], block_size=block_size, index=imeta["factory"], corpus_tokens=cmeta["train_tokens"],
        eval_tokens=cmeta["eval_tokens"], datastore_size=dmeta["rows"],
        recommended_weight=card.metrics.recommended_weight, skipped_files=list(report.skipped),
        notes=run.notes, wall_seconds=time.monotonic() - t0,
    )


# ---------------------------------------------------------------------------------------- checks
def _check_tokenizers(teacher_tok: Any, tok: Any, config: TrainConfig) -> None:
    from memreg.registry.fingerprinting import check_compatible

    compat = check_compatible(teacher_tok, tok, name_a=f"the teacher {config.teacher}", name_b=f"the init model {config.init}")
    if not compat.ok:
        detail = f" ({compat.first_difference})" if compat.first_difference and compat.first_difference not in compat.reason else ""
        raise TokenizerMismatchError(
            f"teacher and init tokenizers differ: {compat.reason}{detail}; the memory decoder must share the teacher's tokenizer"
        )


def _block_size(config: TrainConfig, auto_config: Any) -> int:
    limits = {}
    for role, ref in (("teacher", config.teacher), ("init", config.init)):
        c = auto_config.from_pretrained(ref, trust_remote_code=False)
        n = getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)
        if n:
            limits[role] = int(n)
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


def _claim_work_dir(run: _Run, cdigest: str, tok_digest: str, models: dict[str, Any], block_size: int) -> None:
    claim = {"corpus_digest": cdigest, "tokenizer": tok_digest, "models": models,
             "settings": {**run.cfg.settings(), "block_size": block_size}}
    path = run.work / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != claim:
            raise WorkDirMismatchError(f"work folder {run.work} was made for {_differences(old, claim)}: "
                                       "pass another --work-dir, or delete that folder to start over")
        return
    if run.work.exists() and any(run.work.iterdir()):
        raise WorkDirMismatchError(f"work folder {run.work} is not empty and holds no memreg run: pass another --work-dir")
    run.work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(claim, indent=1))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old.get("corpus_digest") != new["corpus_digest"]:
        return f"another corpus ({old.get('corpus_digest', '?')[:19]}..., this one is {new['corpus_digest'][:19]}...)"
    if old.get("tokenizer") != new["tokenizer"] or old.get("models") != new["models"]:
        return "other teacher/init models"
    a, b = old.get("settings", {}), new["settings"]
    diff = [f"{k}={a.get(k)!r} (now {b.get(k)!r})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "other settings: " + ", ".join(diff)


def _resolve_k(run: _Run, rows: int) -> int:
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


# ---------------------------------------------------------------------------------------- stages
def _stage_corpus(run: _Run, docs: list[corpus_mod.Document], tok: Any) -> dict[str, Any]:
    cached = run.cached("corpus")
    total = sum(len(d.text.encode("utf-8")) for d in docs)
    run.progress.stage("tokenize", total=total, unit="B", cached=cached is not None)
    if cached is None:
        folder = run.stage_dir("corpus")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        train_i, eval_i = corpus_mod.split_documents(docs, eval_fraction=run.cfg.eval_fraction, seed=run.cfg.seed)

        def encode(text: str) -> list[int]:
            return tok(text, add_special_tokens=False)["input_ids"]

        eos = tok.eos_token_id
        n_train = corpus_mod.write_tokens(folder, "train", [docs[i] for i in train_i], encode, eos, run.progress.advance)
        n_eval = corpus_mod.write_tokens(folder, "eval", [docs[i] for i in eval_i], encode, eos, run.progress.advance)
        split = "by document"
        if not eval_i and run.cfg.eval_fraction > 0:  # one document: hold out its tail instead
            n_eval = _split_tail(folder, run.cfg.eval_fraction)
            n_train -= n_eval
            split = "tail of the only document"
            run.note(f"the corpus is one document: held out its last {n_eval} tokens for evaluation")
        cached = run.finish("corpus", {"train_tokens": n_train, "eval_tokens": n_eval, "documents": len(docs),
                                       "eval_documents": len(eval_i), "split": split})
    else:
        run.progress.advance(total)
    run.progress.end_stage()
    return cached


def _split_tail(folder: Path, fraction: float) -> int:
    arr = corpus_mod.TokenArray(folder, "train")
    n = len(arr)
    n_eval = int(n * fraction)
    if n_eval < 2:
        return 0
    all_tokens = arr.slice(0, n).astype(np.uint32)
    del arr
    for p in folder.glob("train-*.npy"):
        p.unlink()
    np.save(folder / "train-00000.npy", all_tokens[: n - n_eval])
    for p in folder.glob("eval-*.npy"):
        p.unlink()
    np.save(folder / "eval-00000.npy", all_tokens[n - n_eval :])
    return n_eval


def _load_lm(ref: str, device: str):
    from memreg.models import load_causal_lm

    return load_causal_lm(ref, device=device)


def _stage_teacher(run: _Run, block_size: int, vocab_size: int) -> dict[str, Any]:
    """Optional: fine-tune a copy of the teacher with plain CE on the *training* split (never the
    held-out text), so that its keys, and so the kNN targets, come from a domain-adapted model as in
    the paper (GPT2-xl fine-tuned on the domain). Off (`adapt_teacher_steps` = 0): the teacher as given."""
    from memreg.train.trainer import BlockBatches, TrainSchedule, mean_ce, train_loop

    cfg = run.cfg
    if not cfg.adapt_teacher_steps:
        return {"model": cfg.teacher, "adapted": False}
    steps = cfg.adapt_teacher_steps
    tokens = corpus_mod.TokenArray(run.stage_dir("corpus"), "train")
    batches = BlockBatches(tokens, None, None, block_size=block_size, batch_size=cfg.batch_size, seed=cfg.seed)
    sched = TrainSchedule(steps, batches.micro_per_epoch, int(cfg.warmup_fraction * steps))
    probe = list(range(min(4, batches.micro_per_epoch)))  # the first epoch's first micro-batches: training text
    cached = run.cached("teacher")
    run.progress.stage("adapt teacher", total=steps, unit="step", cached=cached is not None)
    if cached is None:
        folder = run.stage_dir("teacher")
        model = _load_lm(cfg.teacher, run.device)
        before = mean_ce(model, batches, probe, vocab_size=vocab_size, device=run.device)
        last_step = [0]

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            run.progress.advance(step - last_step[0], **{k: v for k, v in metrics.items() if k in ("ce", "lr")})
            last_step[0] = step

        train_loop(model, batches, folder / "checkpoints", sched=sched, lr=cfg.adapt_teacher_lr,
                   weight_decay=cfg.weight_decay, beta=0.0, grad_accum=1, vocab_size=vocab_size, seed=cfg.seed,
                   checkpoint_every=cfg.checkpoint_every, device=run.device, on_step=on_step, dist=run.dist)
        if run.dist.is_main:
            after = mean_ce(model, batches, probe, vocab_size=vocab_size, device=run.device)
            model.save_pretrained(folder / "final", safe_serialization=True)
            run.note(f"teacher adapted on the training split: {steps} steps, training CE {before:.3f} -> {after:.3f}")
            cached = run.finish("teacher", {"model": str(folder / "final"), "adapted": True, "steps": steps,
                                            "lr": cfg.adapt_teacher_lr, "train_ce_before": before,
                                            "train_ce_after": after})
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # final/ is the result
        del model
        cached = run.shared("teacher", cached)
    else:
        run.progress.advance(steps)
    run.progress.end_stage()
    return cached


def _stage_datastore(run: _Run, block_size: int, teacher_ref: str) -> dict[str, Any]:
    from memreg.train.datastore import build_datastore

    tokens = corpus_mod.TokenArray(run.stage_dir("corpus"), "train")
    cached = run.cached("datastore")
    run.progress.stage("datastore", total=len(tokens) - 1, unit="tok", cached=cached is not None)
    if cached is None:
        folder = run.stage_dir("datastore")
        folder.mkdir(parents=True, exist_ok=True)
        teacher = _load_lm(teacher_ref, run.device)
        rows = build_datastore(teacher, tokens, folder, block_size=block_size, batch_size=run.cfg.teacher_batch_size,
                               device=run.device, progress=run.progress.advance, rank=run.dist.rank,
                               world_size=run.dist.world_size)
        del teacher
        if run.dist.is_main:
            cached = run.finish("datastore", {"rows": rows, "dim": int(np.load(folder / "keys.npy", mmap_mode="r").shape[1]),
                                              "processes": run.dist.world_size})
        cached = run.shared("datastore", cached)
    else:
        run.progress.advance(cached["rows"])
    run.progress.end_stage()
    return cached


def _stage_index(run: _Run, dmeta: dict[str, Any]) -> dict[str, Any]:
    from memreg.train.datastore import open_datastore
    from memreg.train.index import build_index, choose_factory

    cached = run.cached("index")
    run.progress.stage("index", total=dmeta["rows"], unit="key", cached=cached is not None)
    if cached is None:
        keys, _ = open_datastore(run.stage_dir("datastore"))
        cfg = run.cfg
        factory = cfg.index if cfg.index != "auto" else choose_factory(
            dmeta["rows"], dmeta["dim"], memory_budget_mb=cfg.memory_budget_mb, flat_max_keys=cfg.flat_max_keys)
        folder = run.stage_dir("index")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            build_index(keys, factory, folder / "index.faiss", seed=cfg.seed, progress=run.progress.advance)
        except RuntimeError as exc:
            raise InvalidTrainSettingError(f"faiss cannot build index {factory!r}: {str(exc).strip().splitlines()[-1]}") from None
        cached = run.finish("index", {"factory": factory})
    else:
        run.progress.advance(dmeta["rows"])
    run.progress.end_stage()
    return cached


def _stage_knn(run: _Run, k: int, vocab_size: int) -> dict[str, Any]:
    from memreg.train.datastore import open_datastore
    from memreg.train.index import load_index, set_nprobe
    from memreg.train.knn import build_targets, choose_temperature

    cached = run.cached("knn")
    keys, values = open_datastore(run.stage_dir("datastore"))
    run.progress.stage("knn targets", total=len(keys), unit="tok", cached=cached is not None)
    if cached is None:
        folder = run.stage_dir("knn")
        folder.mkdir(parents=True, exist_ok=True)
        index = load_index(run.stage_dir("index") / "index.faiss")
        nprobe = set_nprobe(index, run.cfg.nprobe, k=k)
        temp_file = folder / "temperature.json"
        if run.cfg.temperature != "auto":
            temperature = float(run.cfg.temperature)
        elif temp_file.exists():
            temperature = json.loads(temp_file.read_text())["temperature"]
        else:
            temperature = choose_temperature(index, keys, values, k=k, vocab_size=vocab_size, seed=run.cfg.seed)
            temp_file.write_text(json.dumps({"temperature": temperature}))
            run.note(f"kNN temperature {temperature:g} chosen on a sample of the datastore (squared L2 distances)")
        effective = build_targets(index, keys, values, folder, k=k, temperature=temperature, vocab_size=vocab_size,
                      support=run.cfg.knn_support, batch_size=run.cfg.search_batch_size, progress=run.progress.advance)
        cached = run.finish("knn", {"k": k, "temperature": temperature, "nprobe": nprobe, **effective})
    else:
        run.progress.advance(len(keys))
    run.progress.end_stage()
    return cached


def _stage_train(run: _Run, block_size: int, vocab_size: int, cmeta: dict[str, Any]) -> dict[str, Any]:
    from memreg.train.knn import open_targets
    from memreg.train.trainer import BlockBatches, schedule, train_loop

    cfg = run.cfg
    tokens = corpus_mod.TokenArray(run.stage_dir("corpus"), "train")
    batches = BlockBatches(tokens, *open_targets(run.stage_dir("knn")), block_size=block_size,
                           batch_size=cfg.batch_size, seed=cfg.seed)
    sched = schedule(len(batches.spans), batch_size=cfg.batch_size * run.dist.world_size, grad_accum=cfg.grad_accum, steps=cfg.steps,
                     epochs=cfg.epochs, warmup_fraction=cfg.warmup_fraction)
    cached = run.cached("train")
    run.progress.stage("train", total=sched.total_steps, unit="step", cached=cached is not None)
    if cached is None:
        folder = run.stage_dir("train")
        model = _load_lm(cfg.init, run.device)
        last_step = [0]

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            run.progress.advance(step - last_step[0], **metrics)
            last_step[0] = step

        metrics = train_loop(model, batches, folder / "checkpoints", sched=sched, lr=cfg.lr,
                             weight_decay=cfg.weight_decay, beta=cfg.beta, grad_accum=cfg.grad_accum,
                             vocab_size=vocab_size, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every,
                             device=run.device, on_step=on_step, dist=run.dist)
        if run.dist.is_main:
            model.save_pretrained(folder / "final", safe_serialization=True)
            cached = run.finish("train", {"steps": sched.total_steps, "warmup_steps": sched.warmup_steps,
                                          "final": metrics, "model": str(folder / "final"),
                                          "processes": run.dist.world_size})
        cached = run.shared("train", cached)
    else:
        run.progress.advance(sched.total_steps)
    run.progress.end_stage()
    return cached


def _stage_eval(run: _Run, block_size: int, vocab_size: int, cmeta: dict[str, Any]) -> dict[str, Any]:
    from memreg.evaluate import perplexity, target_log_probs, weight_sweep

    cfg = run.cfg
    n_eval = cmeta["eval_tokens"]
    cached = run.cached("eval")
    run.progress.stage("evaluate", total=3 * max(0, n_eval - 1), unit="tok", cached=cached is not None)
    if cached is None:
        run.stage_dir("eval").mkdir(parents=True, exist_ok=True)
        evaluations: list[dict[str, Any]] = []
        if n_eval < 2:
            run.note("no held-out text: the package carries no perplexity metrics (raise --eval-fraction or add documents)")
        else:
            ids = corpus_mod.TokenArray(run.stage_dir("corpus"), "eval").slice(0, n_eval)
            stride = cfg.eval_stride or max(1, block_size // 2)

            def score(ref: str) -> np.ndarray:
                model = _load_lm(ref, run.device).eval()
                return target_log_probs(model, ids, context=block_size, stride=min(stride, block_size),
                                        vocab_size=vocab_size, device=run.device, progress=run.progress.advance)

            mem = score(str(run.stage_dir("train") / "final"))
            for role, ref in (("teacher", cfg.teacher), ("init", cfg.init)):
                base = score(ref)
                sweep = weight_sweep(base, mem, cfg.weight_grid)
                best = min(sweep, key=lambda w: sweep[w])
                evaluations.append({
                    "base": ref, "dataset": f"held-out {cmeta['split']} ({n_eval} tokens)", "tokens": n_eval - 1,
                    "perplexity_base": perplexity(base), "perplexity_with_memory": sweep[best], "weight": best,
                    "sweep": {f"{w:g}": p for w, p in sweep.items()}, "role": role,
                    "perplexity_memory_alone": perplexity(mem),
                })
        cached = run.finish("eval", {"evaluations": evaluations, "recommended_weight": _recommend(evaluations)})
    else:
        run.progress.advance(3 * max(0, n_eval - 1))
    run.progress.end_stage()
    return cached


def _recommend(evaluations: list[dict[str, Any]]) -> float | None:
    """The grid weight minimising the summed log perplexity over every evaluated base."""
    if not evaluations:
        return None
    grid = evaluations[0]["sweep"].keys()
    return float(min(grid, key=lambda w: sum(math.log(e["sweep"][w]) for e in evaluations)))


def _stage_package(run: _Run, tok: Any, cdigest: str, cmeta, ameta, dmeta, imeta, kmeta, tmeta, emeta, block_size: int,
                   k: int, report: corpus_mod.CorpusReport, wall: float) -> PackageCard:
    import memreg
    from memreg.models import load_causal_lm
    from memreg.train.package import write_package

    cfg = run.cfg
    run.progress.stage("package", total=1, unit="pkg")
    model = load_causal_lm(tmeta["model"])
    card = {
        "name": cfg.name, "version": cfg.version, "description": cfg.description,
        "memreg_version": memreg.__version__,
        "domain": {"labels": cfg.domain, "language": cfg.language, "corpus": cfg.corpus_description,
                   "license": cfg.license},
        "training": {
            "teacher_model": cfg.teacher, "init_model": cfg.init, "corpus_digest": cdigest,
            "corpus_tokens": cmeta["train_tokens"], "datastore_size": dmeta["rows"], "index": imeta["factory"],
            "k": k, "knn_temperature": kmeta["temperature"], "beta": cfg.beta, "steps": tmeta["steps"],
            "block_size": block_size, "learning_rate": cfg.lr, "seed": cfg.seed,
            "memreg_version": memreg.__version__, "wall_seconds": round(wall, 3),
            "extra": {
                "eval_tokens": cmeta["eval_tokens"], "eval_split": cmeta["split"], "documents": cmeta["documents"],
                "skipped_files": len(report.skipped), "knn_support": cfg.knn_support,
                "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "warmup_steps": tmeta["warmup_steps"],
                "weight_decay": cfg.weight_decay, "final_loss": tmeta["final"],
                "nprobe": kmeta.get("nprobe"), "key": "last_ffn_input", "loss": "beta*KL(p_knn||p_mem)+(1-beta)*CE",
                "processes": {"datastore": dmeta.get("processes", 1), "train": tmeta.get("processes", 1)},
                "knn_effective_neighbours": kmeta.get("effective_neighbours"),
                "knn_effective_tokens": kmeta.get("effective_tokens"),
                "teacher_adaptation": ({"steps": ameta["steps"], "lr": ameta["lr"], "split": "training",
                                        "loss": "CE", "train_ce_before": ameta["train_ce_before"],
                                        "train_ce_after": ameta["train_ce_after"]}
                                       if ameta.get("adapted") else None),
            },
        },
        "metrics": {
            "evaluations": [{k2: v for k2, v in e.items() if k2 not in ("role", "perplexity_memory_alone")}
                            for e in emeta["evaluations"]],
            "recommended_weight": emeta["recommended_weight"],
        },
    }
    validated = write_package(Path(cfg.out), model=model, tokenizer=tok, card=card)
    run.progress.advance(1)
    run.progress.end_stage()
    return validated
