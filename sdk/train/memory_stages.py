"""Stages 5-7 of `memreg train`: the memory's init, its training (stopped on the validation loss of
the memory alone or, by default, of base + memory at its best weight: `--select-on`) and the held-out
evaluation that picks the recommended weight.

Validation = the held-out documents of the corpus (no near-copy of a training document, see
`neardup.py`). During training the first `val_tokens` of them are scored in non-overlapping windows
every `eval_every` steps; the final evaluation scores all of them with half-overlapping windows.
Under several processes every scoring is split: each process scores its own batches of windows and
the per-token log-probabilities are summed over the processes (`Dist.merge_scores`), so every process
computes the perplexity (and takes the early-stopping decision) a single process would.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from memreg.core.fsutil import atomic_path
from memreg.train import corpus as corpus_mod
from memreg.train.runner import Meta, StageRunner
from memreg.train.stages import load_lm


def init(run: StageRunner, init_ref: str) -> Meta:
    """`--init-layers N`: the first N blocks of the init model (embeddings, final norm, LM head kept)."""
    from memreg.train.truncate import write_truncated_init

    n = run.cfg.init_layers
    if not n:
        return {"model": init_ref, "truncated": False}

    def body() -> Meta:
        out = run.stage_dir("init") / "model"
        info = write_truncated_init(init_ref, n, out)
        run.progress.advance(1)
        run.note(f"memory starts from the first {n} of {info['source_layers']} blocks of {init_ref} "
                 f"({info['parameters']:,} parameters)")
        return {"model": str(out), "truncated": True, **info}

    return run.run("init", body, label="init", total=1, unit="model")


def eval_ids(run: StageRunner, cmeta: Meta, limit: int | None = None) -> np.ndarray | None:
    n = cmeta["eval_tokens"] if limit is None else min(limit, cmeta["eval_tokens"])
    return corpus_mod.TokenArray(run.stage_dir("corpus"), "eval").slice(0, n) if n >= 2 else None


def score(model_or_ref: Any, ids: np.ndarray, *, run: StageRunner, context: int, stride: int, vocab_size: int,
          progress: bool = True) -> np.ndarray:
    """Per-token log-probabilities of held-out ids under a model (a loaded one, or a ref to load).
    Every process scores its share of the windows; all of them get the whole array."""
    return score_shares(model_or_ref, ids, run=run, context=context, stride=stride, vocab_size=vocab_size,
                        progress=progress)[0]


def score_shares(model_or_ref: Any, ids: np.ndarray, *, run: StageRunner, context: int, stride: int,
                 vocab_size: int, progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """`score`, and how many of the tokens each process scored."""
    from memreg.evaluate import target_log_probs

    model = load_lm(model_or_ref, run.device) if isinstance(model_or_ref, (str, Path)) else model_or_ref
    own = [0]

    def advance(n: int) -> None:
        own[0] += n
        run.progress.advance(n)

    part = target_log_probs(model, ids, context=context, stride=min(stride, context), vocab_size=vocab_size,
                            device=run.device, progress=advance if progress else None, shard=run.dist.shard)
    lp, shares = run.dist.merge_scores(part)
    if progress:
        run.progress.advance(len(lp) - own[0])  # the other processes' share
    return lp, shares


def train(run: StageRunner, block_size: int, vocab_size: int, cmeta: Meta, init_ref: str, base_ref: str) -> Meta:
    """Train the memory; `base_ref` is the base its validation mixes it with (--select-base, or the teacher)."""
    from memreg.train.knn import open_targets
    from memreg.train.stopping import CRITERIA
    from memreg.train.trainer import BlockBatches, load_best, schedule, train_loop

    cfg = run.cfg
    tokens = corpus_mod.TokenArray(run.stage_dir("corpus"), "train")
    batches = BlockBatches(tokens, *open_targets(run.stage_dir("knn")), block_size=block_size,
                           batch_size=cfg.batch_size, seed=cfg.seed)
    sched = schedule(len(batches.spans), batch_size=cfg.batch_size * run.dist.world_size, grad_accum=cfg.grad_accum,
                     steps=cfg.steps, epochs=cfg.epochs, warmup_fraction=cfg.warmup_fraction, max_epochs=cfg.max_epochs)
    eval_every = cfg.eval_every or max(1, math.ceil(sched.steps_per_epoch / 2))
    val = eval_ids(run, cmeta, cfg.val_tokens)

    def body() -> Meta | None:
        folder = run.stage_dir("train")
        validate = None
        if val is not None:  # the base's held-out scores, once (all processes score, process 0 writes)
            base_lp = _cached_scores(run, folder / "base-val-logprobs.npy", lambda: score(
                base_ref, val, run=run, context=block_size, stride=block_size, vocab_size=vocab_size, progress=False))
            validate = _validator(run, val, base_lp, block_size, vocab_size)
        elif sched.early_stopping:
            run.note(f"no held-out text to stop on: training runs the full {cfg.max_epochs:g} epochs", warning=True)
        model = load_lm(init_ref, run.device)
        last_step = [0]

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            run.progress.advance(step - last_step[0], **metrics)
            last_step[0] = step

        outcome = train_loop(
            model, batches, folder / "checkpoints", sched=sched, lr=cfg.lr, weight_decay=cfg.weight_decay,
            beta=cfg.beta, grad_accum=cfg.grad_accum, vocab_size=vocab_size, seed=cfg.seed,
            checkpoint_every=cfg.checkpoint_every, device=run.device, on_step=on_step, dist=run.dist,
            validate=validate, eval_every=eval_every, patience=cfg.patience if sched.early_stopping else None,
            max_seconds=cfg.max_minutes * 60 if cfg.max_minutes else None, monitor=CRITERIA[cfg.select_on],
            on_eval=lambda point: run.progress.advance(0, val_ppl=point["val_perplexity"],
                                                       mix_ppl=point["val_perplexity_with_base"]),
        )
        if not run.dist.is_main:
            return None
        if outcome.best is not None:
            load_best(model, outcome.best)
        model.save_pretrained(folder / "final", safe_serialization=True)
        stop = outcome.stopping
        return {"steps": outcome.steps, "max_steps": sched.total_steps, "warmup_steps": sched.warmup_steps,
                "steps_per_epoch": sched.steps_per_epoch, "early_stopping": sched.early_stopping,
                "stop_reason": outcome.stop_reason, "best_step": stop.best_step if stop.curve else outcome.steps,
                "select_on": cfg.select_on, "select_base": cfg.select_base or cfg.teacher,
                "eval_every": eval_every, "val_tokens": 0 if val is None else int(len(val)),
                "curve": stop.curve, "final": outcome.metrics, "model": str(folder / "final"),
                "processes": run.dist.world_size}

    return run.run("train", body, label="train", total=sched.total_steps, unit="step", all_processes=True)


def _cached_scores(run: StageRunner, path: Path, compute) -> np.ndarray:
    """`compute()` (a collective: every process takes part) unless a previous run saved it."""
    have = path.exists()
    run.dist.barrier()  # every process has looked before process 0 may write: they all agree on `have`
    if have:
        return np.load(path)
    lp = compute()
    if run.dist.is_main:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save adds no suffix
            np.save(f, lp)
    return lp


def _validator(run: StageRunner, val: np.ndarray, base_lp: np.ndarray, block_size: int, vocab_size: int):
    """model -> the curve's validation fields: the memory's loss (nats) and perplexity alone, and
    the base + memory loss and perplexity at the best weight of the grid."""
    from memreg.evaluate import perplexity, weight_sweep

    def validate(model) -> dict[str, float]:
        lp = score(model, val, run=run, context=block_size, stride=block_size, vocab_size=vocab_size, progress=False)
        sweep = weight_sweep(base_lp, lp, run.cfg.weight_grid)
        best = _best_weight(sweep)
        return {"val_loss": float(-lp.mean()), "val_perplexity": perplexity(lp),
                "val_loss_with_base": math.log(sweep[best]), "val_perplexity_with_base": sweep[best],
                "val_weight": best}

    return validate


def evaluate(run: StageRunner, block_size: int, vocab_size: int, cmeta: Meta, models: dict[str, str],
             bases: dict[str, str]) -> Meta:
    """Score the held-out documents with every model in `models` (role -> ref; "memory" included);
    sweep the weight grid for each role in `bases` (role -> the name the card gives that base).
    Every process runs this: each scores its share of the windows (`score`); process 0 writes."""
    from memreg.evaluate import perplexity, weight_sweep

    cfg = run.cfg
    n_eval = cmeta["eval_tokens"]

    def body() -> Meta:
        ids = eval_ids(run, cmeta)
        if ids is None:
            run.note("no held-out text: the package carries no perplexity metrics (raise --eval-fraction or add documents)")
            return {"evaluations": [], "perplexity": {}, "recommended_weight": None}
        stride = cfg.eval_stride or max(1, block_size // 2)
        scored = {role: score_shares(ref, ids, run=run, context=block_size, stride=stride, vocab_size=vocab_size)
                  for role, ref in models.items()}
        lps = {role: lp for role, (lp, _) in scored.items()}
        evaluations = []
        for role, label in bases.items():
            sweep = weight_sweep(lps[role], lps["memory"], cfg.weight_grid)
            best = _best_weight(sweep)
            evaluations.append({
                "base": label, "dataset": f"held-out {cmeta['split']} ({n_eval} tokens)", "tokens": n_eval - 1,
                "perplexity_base": perplexity(lps[role]), "perplexity_with_memory": sweep[best], "weight": best,
                "sweep": {f"{w:g}": p for w, p in sweep.items()},
            })
        return {"evaluations": evaluations, "perplexity": {role: perplexity(lp) for role, lp in lps.items()},
                "recommended_weight": _recommend(evaluations),
                "tokens_per_process": scored["memory"][1]}  # each model's tokens, split the same way

    return run.run("eval", body, label="evaluate", total=len(models) * max(0, n_eval - 1), unit="tok",
                   all_processes=True)


def _best_weight(sweep: dict[float, float]) -> float:
    """The grid weight with the lowest perplexity (the first such in grid order on a tie)."""
    return min(sweep, key=lambda w: sweep[w])


def _recommend(evaluations: list[dict[str, Any]]) -> float | None:
    """The grid weight minimising the summed log perplexity over every evaluated base."""
    if not evaluations:
        return None
    grid = evaluations[0]["sweep"].keys()
    return float(min(grid, key=lambda w: sum(math.log(e["sweep"][w]) for e in evaluations)))
