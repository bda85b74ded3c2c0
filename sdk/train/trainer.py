"""Stage 5: train the memory decoder on the datastore's blocks against the kNN targets.

AdamW, linear schedule with warm-up (never 0 steps), gradient accumulation, periodic checkpoints
(weights as safetensors, optimizer/scheduler/RNG state as tensors-only torch files, the early-stopping
state as JSON) and resume. The order of blocks is a seeded permutation per epoch, a function of the
step alone, so a resumed run replays exactly the batches an uninterrupted one would have seen.
With a validation function the loop evaluates every `eval_every` steps, keeps the best weights in
`best-step-N/` and stops after `patience` evaluations without improvement (`stopping.py`).

The model and optimizer go through `accelerate.Accelerator` (imported only here, when training runs):
under several processes that is torch DDP (gradients averaged by bucketed all-reduces during the
last micro-batch's backward, `no_sync` on the others); on one process it is the plain loop, with the
same numbers as before (float32: memreg sets no mixed precision and no torch.compile, whatever an
accelerate config says). With dropout (GPT-2's default) each process draws its own masks, so W
processes with grad_accum G train like one process with grad_accum W*G only without dropout.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from memreg.train.corpus import TokenArray
from memreg.train.datastore import blocks
from memreg.train.loss import memdec_loss
from memreg.train.stopping import EarlyStopping

if TYPE_CHECKING:
    from memreg.train.distributed import Dist

KEEP_CHECKPOINTS = 2
_PARTS = ("loss", "kl", "ce")


@dataclass(frozen=True)
class TrainSchedule:
    total_steps: int  # the cap: with early stopping, training usually ends before it
    micro_per_epoch: int
    warmup_steps: int
    early_stopping: bool = False
    grad_accum: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.micro_per_epoch / self.grad_accum))


def schedule(n_blocks: int, *, batch_size: int, grad_accum: int, steps: int | None, epochs: float | None,
             warmup_fraction: float, max_epochs: float = 3.0) -> TrainSchedule:
    """Fixed length when `steps` or `epochs` is given; otherwise up to `max_epochs`, stopped early on the
    validation loss. Warm-up is a fraction of the length, and never 0 steps: a pretrained init hit by
    the full learning rate on its first step can lose what it knew before it learns anything."""
    micro = math.ceil(n_blocks / batch_size)
    early = steps is None and epochs is None
    total = steps if steps is not None else max(1, math.ceil((epochs if epochs is not None else max_epochs) * micro / grad_accum))
    return TrainSchedule(total, micro, max(1, int(warmup_fraction * total)), early, grad_accum)


class BlockBatches:
    """Micro-batch m of the endless stream: inputs, labels and kNN targets of `batch_size` blocks."""

    def __init__(self, tokens: TokenArray, knn_ids: np.ndarray | None, knn_probs: np.ndarray | None, *, block_size: int,
                 batch_size: int, seed: int) -> None:
        self.tokens, self.knn_ids, self.knn_probs = tokens, knn_ids, knn_probs
        self.spans = blocks(len(tokens), block_size)
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.micro_per_epoch = math.ceil(len(self.spans) / batch_size)

    def __call__(self, m: int) -> dict[str, torch.Tensor]:
        epoch, j = divmod(m, self.micro_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.spans))
        chosen = [self.spans[i] for i in order[j * self.batch_size : (j + 1) * self.batch_size]]
        B, T = len(chosen), self.block_size
        S = self.knn_ids.shape[1] if self.knn_ids is not None else 1  # no kNN targets: CE only (beta = 0)
        ids = torch.zeros(B, T, dtype=torch.long)
        labels = torch.full((B, T), -100, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        kid = torch.zeros(B, T, S, dtype=torch.long)
        kp = torch.zeros(B, T, S, dtype=torch.float32)
        for r, (a, b) in enumerate(chosen):
            n = b - a
            ids[r, :n] = torch.from_numpy(self.tokens.slice(a, b))
            labels[r, :n] = torch.from_numpy(self.tokens.slice(a + 1, b + 1))
            mask[r, :n] = 1
            if self.knn_ids is not None and self.knn_probs is not None:
                kid[r, :n] = torch.from_numpy(np.asarray(self.knn_ids[a:b], dtype=np.int64))
                kp[r, :n] = torch.from_numpy(np.asarray(self.knn_probs[a:b], dtype=np.float32))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "knn_ids": kid, "knn_probs": kp}


def make_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float, sched: TrainSchedule):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < sched.warmup_steps:
            return (step + 1) / (sched.warmup_steps + 1)
        return max(0.0, (sched.total_steps - step) / max(1, sched.total_steps - sched.warmup_steps))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


Validate = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class TrainOutcome:
    steps: int  # optimizer steps taken (the last checkpoint's step)
    metrics: dict[str, float]  # the last step's training loss parts
    stopping: EarlyStopping
    stop_reason: str  # "patience", "time budget", "schedule" (the cap or --steps), or "resumed finished"
    best: Path | None  # folder of the best checkpoint's weights (None without validation)


def train_loop(
    model: torch.nn.Module, batches: BlockBatches, ckpt_dir: Path, *, sched: TrainSchedule, lr: float,
    weight_decay: float, beta: float, grad_accum: int, vocab_size: int, seed: int, checkpoint_every: int,
    device: str = "cpu", on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    dist: "Dist | None" = None, validate: Validate | None = None, eval_every: int | None = None,
    patience: int | None = None, max_seconds: float | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None, monitor: str = "val_loss",
) -> TrainOutcome:
    """Run (or resume) training; returns where it stopped and the best checkpoint.

    With `validate` (model in eval mode -> {"val_loss": ..., ...}), the model is scored before the
    first step and every `eval_every` steps; the best point's weights are kept in `best-step-N/`,
    and with `patience` the run stops after that many evaluations without improvement; "best" is
    judged on the point's `monitor` field (the memory's `val_loss`, or `val_loss_with_base`). With `dist`
    of several processes: process r takes micro-batches (step*grad_accum + micro)*W + r, DDP
    averages the gradients, every process takes part in the (split) validation and gets the same
    result, so they stop at the same step; process 0 writes the checkpoints."""
    from memreg.train.distributed import Dist

    dist = dist or Dist()
    torch.manual_seed(seed)
    model.to(device).train()
    opt, lr_sched = make_optimizer(model, lr=lr, weight_decay=weight_decay, sched=sched)
    step, stopping, pending = _resume(model, opt, lr_sched, ckpt_dir, EarlyStopping(patience, monitor=monitor))
    accelerator, ddp_model, ddp_opt = _accelerate(model, opt, device=device, grad_accum=grad_accum, dist=dist)
    if on_step is not None and step:
        on_step(step, sched.total_steps, {})
    started = time.monotonic()
    eval_every = eval_every or sched.total_steps

    def evaluate(at: int) -> None:
        point = {**_means(pending), **_evaluate(model, validate)}  # type: ignore[arg-type]
        pending.clear()
        if stopping.record(at, point) and dist.is_main:
            _save_weights(model, ckpt_dir / f"best-step-{at:07d}")
        if on_eval is not None:
            on_eval(stopping.curve[-1])

    if validate is not None and not stopping.curve:
        evaluate(0)  # the untrained init: the point every later one has to beat
    metrics: dict[str, float] = {}
    reason = "resumed finished" if stopping.should_stop else "schedule"
    while step < sched.total_steps and not stopping.should_stop:
        metrics = _optimizer_step(accelerator, ddp_model, batches, ddp_opt, lr_sched, step, grad_accum=grad_accum,
                                  beta=beta, vocab_size=vocab_size, device=device, dist=dist)
        step += 1
        _add(pending, metrics)
        out_of_time = max_seconds is not None and _any(accelerator, time.monotonic() - started > max_seconds)
        if validate is not None and (step % eval_every == 0 or step == sched.total_steps or out_of_time):
            evaluate(step)
        stop = stopping.should_stop or out_of_time
        if dist.is_main and (step % checkpoint_every == 0 or step == sched.total_steps or stop):
            save_checkpoint(model, opt, lr_sched, ckpt_dir, step, stopping=stopping, pending=pending)
        if on_step is not None:
            on_step(step, sched.total_steps, metrics)
        if stop:
            reason = "patience" if stopping.should_stop else "time budget"
            break
    best = ckpt_dir / f"best-step-{stopping.best_step:07d}" if stopping.best_step >= 0 else None
    return TrainOutcome(step, metrics, stopping, reason, best)


def _accelerate(model: torch.nn.Module, opt, *, device: str, grad_accum: int, dist: "Dist"):
    """(accelerator, model, optimizer) as the loop uses them: DDP under several processes (the process
    group `Dist.from_env` joined), the model itself on one. The Accelerator divides each micro-batch's
    loss by `grad_accum` in `backward`, as the loop did by hand. The scheduler stays outside: it counts
    optimizer steps, which the schedule already divided by the number of processes."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    accelerator = Accelerator(
        cpu=not str(device).startswith("cuda"), device_placement=False, mixed_precision="no", dynamo_backend="no",
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False))
    if accelerator.num_processes != dist.world_size:
        raise RuntimeError(f"accelerate sees {accelerator.num_processes} processes, memreg {dist.world_size}")
    ddp_model, ddp_opt = accelerator.prepare(model, opt)
    return accelerator, ddp_model, ddp_opt


def _optimizer_step(accelerator, model, batches: BlockBatches, opt, lr_sched, step: int, *, grad_accum: int,
                    beta: float, vocab_size: int, device: str, dist: "Dist") -> dict[str, float]:
    """One optimizer step over grad_accum micro-batches per process; the loss parts returned are the
    means over every micro-batch of every process (the same on all of them)."""
    share = grad_accum * dist.world_size
    totals = torch.zeros(3, dtype=torch.float64)
    for micro in range(grad_accum):
        batch = {k: v.to(device) for k, v in batches((step * grad_accum + micro) * dist.world_size + dist.rank).items()}
        # gradients are all-reduced once, in the last micro-batch's backward
        with accelerator.no_sync(model) if micro < grad_accum - 1 else contextlib.nullcontext():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
            parts = memdec_loss(logits, batch["labels"], batch["knn_ids"], batch["knn_probs"], beta=beta,
                                vocab_size=vocab_size)
            accelerator.backward(parts.loss)
        for i, name in enumerate(_PARTS):
            totals[i] += float(getattr(parts, name).detach()) / share
    accelerator.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    lr_sched.step()
    opt.zero_grad(set_to_none=True)
    if dist.world_size > 1:
        totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    return {**{name: float(totals[i]) for i, name in enumerate(_PARTS)}, "lr": lr_sched.get_last_lr()[0]}


def _any(accelerator, flag: bool) -> bool:
    """True on every process when it is true on one (the time budget: the processes must agree)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum").item() > 0)


def _add(pending: dict[str, float], metrics: dict[str, float]) -> None:
    """Sum the step's training loss parts into those since the previous evaluation."""
    for name in _PARTS:
        pending[name] = pending.get(name, 0.0) + metrics[name]
    pending["n"] = pending.get("n", 0.0) + 1


def _means(pending: dict[str, float]) -> dict[str, float]:
    """Mean training loss parts since the previous evaluation (none before the first step)."""
    n = pending.get("n", 0.0)
    return {f"train_{k}": pending[k] / n for k in _PARTS} if n else {}


def _evaluate(model: torch.nn.Module, validate: Validate) -> dict[str, float]:
    was_training = model.training
    model.eval()  # no dropout; evaluation draws no random numbers, so resumed runs stay identical
    try:
        return dict(validate(model))
    finally:
        model.train(was_training)


@torch.no_grad()
def mean_ce(model: torch.nn.Module, batches: BlockBatches, micro_batches: list[int], *, vocab_size: int,
            device: str = "cpu") -> float:
    """Mean next-token cross-entropy of `model` on the given micro-batches (eval mode, no dropout)."""
    was_training = model.training
    model.eval()
    total = n = 0.0
    for m in micro_batches:
        batch = batches(m)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        labels = batch["labels"].to(device)
        logq = torch.log_softmax(logits[..., :vocab_size].float(), dim=-1)
        mask = labels != -100
        total += float(-(logq.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * mask).sum())
        n += float(mask.sum())
    model.train(was_training)
    return total / max(n, 1.0)


def save_checkpoint(model, opt, lr_sched, ckpt_dir: Path, step: int, *, stopping: EarlyStopping | None = None,
                    pending: dict[str, float] | None = None) -> Path:
    final = ckpt_dir / f"step-{step:07d}"
    if final.exists():
        return final
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_weights(model, tmp, atomic=False)
    torch.save({"optimizer": opt.state_dict(), "scheduler": lr_sched.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
    (tmp / "stopping.json").write_text(json.dumps({"stopping": (stopping or EarlyStopping(None)).state_dict(),
                                                   "pending": pending or {}}))
    os.replace(tmp, final)
    for old in sorted(ckpt_dir.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    if stopping is not None:  # only now may an older best go: this checkpoint no longer points at it
        for old in ckpt_dir.glob("best-step-*"):
            if old.name != f"best-step-{stopping.best_step:07d}":
                shutil.rmtree(old, ignore_errors=True)
    return final


def _save_weights(model, folder: Path, *, atomic: bool = True) -> None:
    from safetensors.torch import save_model

    from memreg.train.packaging import replace_folder

    target = folder.with_name(f".tmp-{folder.name}") if atomic else folder
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    save_model(model, str(target / "model.safetensors"))
    if atomic:
        replace_folder(target, folder)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(ckpt_dir.glob("step-*")) if ckpt_dir.exists() else []
    return done[-1] if done else None


def _resume(model, opt, lr_sched, ckpt_dir: Path, fresh: EarlyStopping) -> tuple[int, EarlyStopping, dict[str, float]]:
    last = latest_checkpoint(ckpt_dir)
    if last is None:
        return 0, fresh, {}
    load_best(model, last)  # a checkpoint folder holds model.safetensors as a best-step folder does
    state = torch.load(last / "state.pt", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    lr_sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    saved = json.loads((last / "stopping.json").read_text())
    stopping = EarlyStopping.from_state({**saved["stopping"], "patience": fresh.patience})
    if stopping.monitor != fresh.monitor:  # its best so far was judged on another score: not comparable
        from memreg.core.errors import InvalidTrainSettingError

        raise InvalidTrainSettingError(
            f"the checkpoints in {ckpt_dir} chose their best on {stopping.monitor!r}, this run on {fresh.monitor!r}: "
            "resume with the same --select-on, or train into another folder")
    return int(state["step"]), stopping, saved["pending"]


def load_best(model, best: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(best / "model.safetensors"))
