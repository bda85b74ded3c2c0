"""Stage 5: train the memory decoder on the datastore's blocks against the kNN targets.

AdamW, linear schedule with warm-up, gradient accumulation, periodic checkpoints (weights as
safetensors, optimizer/scheduler/RNG state as tensors-only torch files) and resume. The order of
blocks is a seeded permutation per epoch, a function of the step alone, so a resumed run replays
exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from memreg.train.corpus import TokenArray
from memreg.train.datastore import blocks
from memreg.train.loss import memdec_loss

if TYPE_CHECKING:
    from memreg.train.distributed import Dist

KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class TrainSchedule:
    total_steps: int
    micro_per_epoch: int
    warmup_steps: int


def schedule(n_blocks: int, *, batch_size: int, grad_accum: int, steps: int | None, epochs: float | None,
             warmup_fraction: float) -> TrainSchedule:
    micro = math.ceil(n_blocks / batch_size)
    total = steps if steps is not None else max(1, math.ceil((epochs or 3.0) * micro / grad_accum))
    return TrainSchedule(total, micro, int(warmup_fraction * total))


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


def train_loop(
    model: torch.nn.Module, batches: BlockBatches, ckpt_dir: Path, *, sched: TrainSchedule, lr: float,
    weight_decay: float, beta: float, grad_accum: int, vocab_size: int, seed: int, checkpoint_every: int,
    device: str = "cpu", on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    dist: "Dist | None" = None,
) -> dict[str, float]:
    """Run (or resume) training to `sched.total_steps`; returns the last step's metrics.

    With `dist` of several processes: process r takes micro-batches (step*grad_accum + micro)*W + r,
    gradients are averaged across processes before each step, process 0 writes the checkpoints."""
    from memreg.train.distributed import Dist

    dist = dist or Dist()
    world, rank = dist.world_size, dist.rank
    torch.manual_seed(seed)
    model.to(device).train()
    opt, lr_sched = make_optimizer(model, lr=lr, weight_decay=weight_decay, sched=sched)
    step = _resume(model, opt, lr_sched, ckpt_dir)
    if on_step is not None and step:
        on_step(step, sched.total_steps, {})
    metrics: dict[str, float] = {}
    while step < sched.total_steps:
        totals = {"loss": 0.0, "kl": 0.0, "ce": 0.0}
        for micro in range(grad_accum):
            batch = {k: v.to(device) for k, v in batches((step * grad_accum + micro) * world + rank).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
            parts = memdec_loss(logits, batch["labels"], batch["knn_ids"], batch["knn_probs"],
                                beta=beta, vocab_size=vocab_size)
            (parts.loss / grad_accum).backward()
            for name in totals:
                totals[name] += float(getattr(parts, name).detach()) / grad_accum
        dist.average_gradients(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        metrics = {**totals, "lr": lr_sched.get_last_lr()[0]}
        if dist.is_main and (step % checkpoint_every == 0 or step == sched.total_steps):
            save_checkpoint(model, opt, lr_sched, ckpt_dir, step)
        if on_step is not None:
            on_step(step, sched.total_steps, metrics)
    return metrics


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


def save_checkpoint(model, opt, lr_sched, ckpt_dir: Path, step: int) -> Path:
    from safetensors.torch import save_model

    final = ckpt_dir / f"step-{step:07d}"
    if final.exists():
        return final
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "scheduler": lr_sched.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
    os.replace(tmp, final)
    for old in sorted(ckpt_dir.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(ckpt_dir.glob("step-*")) if ckpt_dir.exists() else []
    return done[-1] if done else None


def _resume(model, opt, lr_sched, ckpt_dir: Path) -> int:
    from safetensors.torch import load_model

    last = latest_checkpoint(ckpt_dir)
    if last is None:
        return 0
    load_model(model, str(last / "model.safetensors"))
    state = torch.load(last / "state.pt", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    lr_sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])
