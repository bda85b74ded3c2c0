"""Several processes, one run: `accelerate launch` / `torchrun` set RANK, WORLD_SIZE, LOCAL_RANK
(and MASTER_ADDR/PORT); memreg then joins a torch.distributed process group (gloo on CPU, NCCL on
CUDA) and every stage that can be split is split:

* datastore: every process runs the teacher over its share of the batches (every WORLD_SIZE-th)
  and writes its own rows of the one memory-mapped datastore;
* kNN targets: process 0 creates the target files and picks the temperature; then every process
  searches its own batches of rows (every WORLD_SIZE-th) against the whole index and writes them;
* training (and the optional teacher adaptation): torch DDP through `accelerate.Accelerator`
  (`trainer.py`); process r takes micro-batches (step*grad_accum + micro)*W + r, so one optimizer
  step sees W times as many blocks and the step count is divided accordingly; process 0 writes
  the checkpoints;
* evaluation (the held-out scores and the validation that stops training): every process scores
  its own batches of windows (every WORLD_SIZE-th); `merge_scores` sums the per-token
  log-probabilities over the processes, so every process holds the whole array, the same perplexity
  and the same early-stopping decision as one process would;
* tokenizing, the faiss index and the package: process 0, while the others wait at a barrier,
  then read its cached result.

Why `Dist` and not accelerate's `PartialState` for this bookkeeping: the stages before training
need only a rank, a barrier and a sum, and accelerate is imported only when training runs; and
process 0 alone builds the index for hours while the others wait, so the group is joined here with
a 12-hour timeout (accelerate's default is 30 minutes). The Accelerator then finds the group
already joined and uses it (`trainer._accelerate`).

A single process (no WORLD_SIZE, or 1) runs exactly as before: no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

# Process 0 alone builds the index while the others wait: allow hours.
BARRIER_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local)  # NCCL collectives run on the current device
            dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), local)

    def device(self, device: str) -> str:
        """cuda -> cuda:LOCAL_RANK when several processes share a machine."""
        return f"cuda:{self.local_rank}" if self.world_size > 1 and device == "cuda" else device

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world size): which share of the batches this process scores."""
        return self.rank, self.world_size

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def merge_scores(self, part: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Each process scored its own positions (NaN elsewhere); every process gets them all, and
        how many positions each process scored.

        The all-reduce sums one scored value and W-1 zeros per position, which is exact (x + 0 == x),
        so the merged array equals one process's bit for bit. The counts must add up to the whole:
        a share nobody scored (or scored twice) is an error, not a silent zero (or a double)."""
        scored = ~np.isnan(part)
        if self.world_size <= 1:
            return part, [int(scored.sum())]
        import torch
        import torch.distributed as dist

        where = "cuda" if dist.get_backend() == "nccl" else "cpu"
        values = torch.from_numpy(np.where(scored, part, 0.0)).to(where)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        counts = [torch.zeros(1, dtype=torch.int64, device=where) for _ in range(self.world_size)]
        dist.all_gather(counts, torch.tensor([int(scored.sum())], dtype=torch.int64, device=where))
        per_process = [int(c.item()) for c in counts]
        if sum(per_process) != part.size:
            raise RuntimeError(f"the processes scored {per_process} positions, {part.size} in all")
        return values.cpu().numpy(), per_process
