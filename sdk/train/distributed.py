"""Several processes, one run: `accelerate launch` / `torchrun` set RANK, WORLD_SIZE, LOCAL_RANK
(and MASTER_ADDR/PORT); memreg then joins a torch.distributed process group (gloo on CPU, NCCL on
CUDA) and splits the work:

* datastore: every process runs the teacher over its share of the batches (every WORLD_SIZE-th)
  and writes its own rows of the one memory-mapped datastore;
* training (and the optional teacher adaptation): data parallel; each process takes its own
  micro-batches, gradients are averaged with all_reduce before every optimizer step (the same
  update as DDP), so one step sees WORLD_SIZE times as many blocks and the step count is divided
  accordingly; process 0 writes the checkpoints;
* kNN targets: process 0 creates the target files and picks the temperature; then every process
  searches its own batches of rows (every WORLD_SIZE-th) against the whole index and writes them;
* tokenizing, the faiss index, the evaluation and the package: process 0, while the others wait
  at a barrier, then read its cached result.

A single process (no WORLD_SIZE, or 1) runs exactly as before: no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

# Process 0 alone builds the index and the kNN targets while the others wait: allow hours.
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
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0") or 0))

    def device(self, device: str) -> str:
        """cuda -> cuda:LOCAL_RANK when several processes share a machine."""
        return f"cuda:{self.local_rank}" if self.world_size > 1 and device == "cuda" else device

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def average_gradients(self, model) -> None:
        """All-reduce every gradient and divide by the number of processes (what DDP does)."""
        if self.world_size <= 1:
            return
        import torch
        import torch.distributed as dist

        for p in model.parameters():
            if not p.requires_grad:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(self.world_size)
