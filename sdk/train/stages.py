"""Stages 1-4 of `memreg train`: corpus -> (teacher adaptation) -> datastore -> index -> kNN targets.

Each function is one stage body run through `StageRunner.run`, which skips it when its result is
cached and marks it done; the body returns the stage's metadata (what later stages and the card read).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from memreg.core.fsutil import atomic_write_json
from memreg.train import corpus as corpus_mod
from memreg.core.errors import InvalidTrainSettingError
from memreg.train.runner import Meta, StageRunner


def load_lm(ref: str, device: str):
    from memreg.models import load_causal_lm

    return load_causal_lm(ref, device=device)


def corpus(run: StageRunner, docs: list[corpus_mod.Document], tok: Any,
           eval_docs: list[corpus_mod.Document] | None = None) -> Meta:
    """Tokenize into uint32 shards; hold out whole near-duplicate clusters of documents for evaluation,
    or the given `eval_docs` (--eval-corpus) as they are."""
    total = sum(len(d.text.encode("utf-8")) for d in [*docs, *(eval_docs or [])])

    def body() -> Meta:
        folder = run.stage_dir("corpus")
        for old in folder.glob("*.npy"):  # a killed tokenization starts over: it is the cheap stage
            old.unlink()
        if eval_docs is not None:
            return _given_split(run, folder, docs, eval_docs, tok)
        labels = _clusters(docs) if run.cfg.eval_fraction > 0 and len(docs) >= 2 else None
        train_i, eval_i = corpus_mod.split_documents(docs, eval_fraction=run.cfg.eval_fraction, seed=run.cfg.seed,
                                                     labels=labels)
        n_train = _write(run, folder, "train", [docs[i] for i in train_i], tok)
        n_eval = _write(run, folder, "eval", [docs[i] for i in eval_i], tok)
        split: Meta = {"split": "by near-duplicate cluster of documents"}
        if eval_i:
            split.update(_split_report(docs, train_i, eval_i, labels))
        elif run.cfg.eval_fraction > 0:  # one document (or one cluster): hold out its tail instead
            n_eval = _split_tail(folder, run.cfg.eval_fraction)
            n_train -= n_eval
            split = {"split": "tail of the training text (the corpus is one document or one near-duplicate cluster)"}
            run.note(f"no document could be held out without a near-copy in training: held out the last {n_eval} "
                     "tokens for evaluation; its perplexities are optimistic", warning=True)
        return {"train_tokens": n_train, "eval_tokens": n_eval, "documents": len(docs),
                "eval_documents": len(eval_i), **split}

    return run.run("corpus", body, label="tokenize", total=total, unit="B")


def _write(run: StageRunner, folder: Path, name: str, docs: list[corpus_mod.Document], tok: Any) -> int:
    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    return corpus_mod.write_tokens(folder, name, docs, encode, tok.eos_token_id, run.progress.advance)


def _given_split(run: StageRunner, folder: Path, docs: list[corpus_mod.Document],
                 eval_docs: list[corpus_mod.Document], tok: Any) -> Meta:
    """--eval-corpus: trust the user's split, but measure it as ours is measured, and say so when a
    held-out document has a near-copy in the training documents (its perplexity would flatter)."""
    both = [*docs, *eval_docs]
    labels = _clusters(both)
    train_i, eval_i = list(range(len(docs))), list(range(len(docs), len(both)))
    report = _split_report(both, train_i, eval_i, labels)
    train_clusters = {labels[i] for i in train_i}
    copies = sum(labels[i] in train_clusters for i in eval_i)
    if copies:
        run.note(f"{copies} of {len(eval_docs)} --eval-corpus documents have a near-copy in the training corpus: "
                 "their perplexities flatter the memory", warning=True)
    return {"train_tokens": _write(run, folder, "train", docs, tok), "eval_tokens": _write(run, folder, "eval", eval_docs, tok),
            "documents": len(both), "eval_documents": len(eval_docs), "split": "given (--eval-corpus)",
            "eval_near_copies": copies, **report}


def _clusters(docs: list[corpus_mod.Document]) -> list[int]:
    from memreg.train.neardup import near_duplicate_clusters

    return near_duplicate_clusters([d.text for d in docs])


def _split_report(docs: list[corpus_mod.Document], train_i: list[int], eval_i: list[int],
                  labels: list[int] | None) -> Meta:
    from memreg.train.neardup import split_report

    return split_report(docs, train_i, eval_i, labels=labels)


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


def teacher(run: StageRunner, block_size: int, vocab_size: int, teacher_ref: str) -> Meta:
    """Optional: fine-tune a copy of the teacher with plain CE on the *training* split (never the
    held-out text), so that its keys, and so the kNN targets, come from a domain-adapted model as in
    the paper (GPT2-xl fine-tuned on the domain). Off (`adapt_teacher_steps` = 0): the teacher as given."""
    from memreg.train.trainer import BlockBatches, TrainSchedule, mean_ce, train_loop

    cfg = run.cfg
    if not cfg.adapt_teacher_steps:
        return {"model": teacher_ref, "adapted": False}
    steps = cfg.adapt_teacher_steps
    tokens = corpus_mod.TokenArray(run.stage_dir("corpus"), "train")
    batches = BlockBatches(tokens, None, None, block_size=block_size, batch_size=cfg.batch_size, seed=cfg.seed)
    sched = TrainSchedule(steps, batches.micro_per_epoch, max(1, int(cfg.warmup_fraction * steps)))
    probe = list(range(min(4, batches.micro_per_epoch)))  # the first epoch's first micro-batches: training text

    def body() -> Meta | None:
        folder = run.stage_dir("teacher")
        model = load_lm(teacher_ref, run.device)
        before = mean_ce(model, batches, probe, vocab_size=vocab_size, device=run.device)
        last_step = [0]

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            run.progress.advance(step - last_step[0], **{k: v for k, v in metrics.items() if k in ("ce", "lr")})
            last_step[0] = step

        train_loop(model, batches, folder / "checkpoints", sched=sched, lr=cfg.adapt_teacher_lr,
                   weight_decay=cfg.weight_decay, beta=0.0, grad_accum=1, vocab_size=vocab_size, seed=cfg.seed,
                   checkpoint_every=cfg.checkpoint_every, device=run.device, on_step=on_step, dist=run.dist)
        if not run.dist.is_main:
            return None
        after = mean_ce(model, batches, probe, vocab_size=vocab_size, device=run.device)
        model.save_pretrained(folder / "final", safe_serialization=True)
        run.note(f"teacher adapted on the training split: {steps} steps, training CE {before:.3f} -> {after:.3f}")
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # final/ is the result
        return {"model": str(folder / "final"), "adapted": True, "steps": steps, "lr": cfg.adapt_teacher_lr,
                "train_ce_before": before, "train_ce_after": after}

    return run.run("teacher", body, label="adapt teacher", total=steps, unit="step", all_processes=True)


def datastore(run: StageRunner, block_size: int, teacher_ref: str) -> Meta:
    from memreg.train.datastore import build_datastore

    tokens = corpus_mod.TokenArray(run.stage_dir("corpus"), "train")

    def body() -> Meta | None:
        folder = run.stage_dir("datastore")
        model = load_lm(teacher_ref, run.device)
        rows = build_datastore(model, tokens, folder, block_size=block_size, batch_size=run.cfg.teacher_batch_size,
                               device=run.device, progress=run.progress.advance, rank=run.dist.rank,
                               world_size=run.dist.world_size)
        dim = int(np.load(folder / "keys.npy", mmap_mode="r").shape[1])
        return {"rows": rows, "dim": dim, "processes": run.dist.world_size}

    return run.run("datastore", body, label="datastore", total=len(tokens) - 1, unit="tok", all_processes=True)


def index(run: StageRunner, dmeta: Meta) -> Meta:
    from memreg.train.datastore import open_datastore
    from memreg.train.index import build_index, choose_factory, choose_on_disk
    from memreg.train.torch_search import resolve_search

    def body() -> Meta:
        keys, _ = open_datastore(run.stage_dir("datastore"))
        cfg = run.cfg
        if resolve_search(cfg.search, run.device) == "torch":
            run.progress.advance(dmeta["rows"])
            return {"factory": "torch-exact"}  # no index to build: the kNN stage searches the keys directly
        factory = cfg.index if cfg.index != "auto" else choose_factory(
            dmeta["rows"], dmeta["dim"], memory_budget_mb=cfg.memory_budget_mb, flat_max_keys=cfg.flat_max_keys)
        on_disk = choose_on_disk(factory, dmeta["rows"], dmeta["dim"], memory_budget_mb=cfg.memory_budget_mb,
                                 asked=cfg.index_on_disk)
        try:
            build_index(keys, factory, run.stage_dir("index") / "index.faiss", seed=cfg.seed,
                        progress=run.progress.advance, on_disk=on_disk)
        except RuntimeError as exc:
            raise InvalidTrainSettingError(f"faiss cannot build index {factory!r}: {str(exc).strip().splitlines()[-1]}") from None
        if on_disk:
            run.note(f"index {factory}: inverted lists on disk (index.ivfdata), memory-mapped when searched")
            return {"factory": factory, "on_disk": True}
        return {"factory": factory}

    return run.run("index", body, label="index", total=dmeta["rows"], unit="key")


def knn(run: StageRunner, k: int, vocab_size: int) -> Meta:
    """kNN targets. Several processes share the rows: process 0 creates the files and chooses the
    temperature while the others wait, then each searches its own batches (the same batches as one
    process would, so the same targets), and process 0 merges the statistics."""
    from memreg.train.datastore import open_datastore
    from memreg.train.knn import build_targets, choose_temperature, create_targets, merge_stats

    keys, values = open_datastore(run.stage_dir("datastore"))
    dist = run.dist

    def body() -> Meta | None:
        folder = run.stage_dir("knn")
        index, nprobe, recall = _search_index(run, keys, k)
        temp_file = folder / "temperature.json"
        if dist.is_main:
            create_targets(folder, len(keys), min(run.cfg.knn_support, vocab_size))
            if run.cfg.temperature == "auto" and not temp_file.exists():
                t = choose_temperature(index, keys, values, k=k, vocab_size=vocab_size, seed=run.cfg.seed)
                atomic_write_json(temp_file, {"temperature": t})
                run.note(f"kNN temperature {t:g} chosen on a sample of the datastore (squared L2 distances)")
        dist.barrier()
        temperature = (float(run.cfg.temperature) if run.cfg.temperature != "auto"
                       else json.loads(temp_file.read_text())["temperature"])
        effective = build_targets(index, keys, values, folder, k=k, temperature=temperature, vocab_size=vocab_size,
                                  support=run.cfg.knn_support, batch_size=run.cfg.search_batch_size,
                                  progress=run.progress.advance, rank=dist.rank, world_size=dist.world_size)
        dist.barrier()
        if not dist.is_main:
            return None
        if dist.world_size > 1:
            effective = merge_stats(folder, dist.world_size)
        return {"k": k, "temperature": temperature, "nprobe": nprobe, "sample_recall": recall,
                "processes": dist.world_size, **effective}

    return run.run("knn", body, label="knn targets", total=len(keys), unit="tok", all_processes=True)


def _search_index(run: StageRunner, keys, k: int) -> tuple[object, int | None, float | None]:
    """The kNN stage's index: exact torch search on the run's device, or the faiss index of stage 3 with
    nprobe given or tuned to the recall goal. Returns (index, nprobe, recall@k measured on a sample)."""
    from memreg.train.torch_search import TorchFlatIndex, resolve_search

    if resolve_search(run.cfg.search, run.device) == "torch":
        return TorchFlatIndex(keys, device=run.device), None, 1.0
    from memreg.train.index import load_index, set_nprobe, tune_nprobe

    index = load_index(run.stage_dir("index") / "index.faiss")
    if run.cfg.nprobe is not None:
        return index, set_nprobe(index, run.cfg.nprobe, k=k), None  # recall not measured
    nprobe, recall = tune_nprobe(index, keys, k=k, goal=run.cfg.recall_goal, seed=run.cfg.seed)
    if nprobe is not None:
        note = "" if recall >= run.cfg.recall_goal else f"; below the goal {run.cfg.recall_goal:g} even with every list (PQ codes cap it)"
        run.note(f"IVF nprobe {nprobe}: recall@{k} {recall:.3f} of the exact neighbours on a sample{note}")
    return index, nprobe, recall
