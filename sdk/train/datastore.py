"""Stage 2: the datastore. Key = the teacher's `last_ffn_input` (the input of the last block's MLP,
as in the reference code), value = the next token id.

Row p of the datastore is training position p: key = hidden state at p, value = token p+1. The
training stream is cut into blocks of `block_size` inputs (the last one shorter); the memory decoder
later trains on exactly these blocks, so row ids line up with its positions.
Keys are float16, values int32, both memory-mapped .npy files written in place; `progress.json`
records how many rows are done, so a killed run continues where it stopped. The rows written (and,
in later stages, read) are dropped from the process's resident set as it goes (`release_rows`), so
a datastore larger than RAM streams through the page cache instead of piling up in its RSS.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from memreg.core.fsutil import atomic_write_json
from memreg.train.corpus import TokenArray
from memreg.core.errors import UnsupportedArchitectureError

FLUSH_EVERY_ROWS = 65_536


class _StopForward(Exception):
    """Raised by the hook once the keys are captured: the rest of the network is not needed."""


def last_mlp(model: torch.nn.Module) -> torch.nn.Module:
    """The MLP of the last transformer block: GPT-2 `transformer.h[-1].mlp`,
    Llama/Qwen2/Mistral (and most decoders) `model.layers[-1].mlp`."""
    base = getattr(model, "base_model", model)
    for path in ("transformer.h", "model.layers", "layers", "h", "gpt_neox.layers", "model.decoder.layers"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is None and base is not model:
            obj = base
            for part in path.split("."):
                obj = getattr(obj, part, None)
                if obj is None:
                    break
        if isinstance(obj, torch.nn.ModuleList) and len(obj):
            block = obj[-1]
            mlp = getattr(block, "mlp", None)
            if mlp is None:
                mlp = getattr(block, "feed_forward", None)
            if isinstance(mlp, torch.nn.Module):
                return mlp
    raise UnsupportedArchitectureError(
        f"cannot find the last block's MLP in {type(model).__name__}: memreg supports GPT-2, Llama, Qwen2, "
        "Mistral and models laid out like them (transformer.h[-1].mlp or model.layers[-1].mlp)"
    )


@torch.no_grad()
def last_ffn_inputs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) ids -> (B, T, D) inputs of the last block's MLP, skipping the rest of the forward."""
    captured: list[torch.Tensor] = []

    def hook(_module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        captured.append(x.detach())
        raise _StopForward

    handle = last_mlp(model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise UnsupportedArchitectureError(f"the last MLP of {type(model).__name__} was never called")
    return captured[0]


def blocks(n_tokens: int, block_size: int) -> list[tuple[int, int]]:
    """(start, stop) of every input block; targets are start+1 .. stop. Covers rows 0 .. n_tokens-2."""
    rows = n_tokens - 1
    return [(s, min(s + block_size, rows)) for s in range(0, rows, block_size)]


def _batches(spans: list[tuple[int, int]], batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """Consecutive spans of one length together (only the last block is shorter)."""
    batch: list[tuple[int, int]] = []
    for span in spans:
        if batch and (len(batch) == batch_size or span[1] - span[0] != batch[0][1] - batch[0][0]):
            yield batch
            batch = []
        batch.append(span)
    if batch:
        yield batch


def build_datastore(
    model: torch.nn.Module, tokens: TokenArray, out: Path, *, block_size: int, batch_size: int,
    device: str = "cpu", progress: Callable[[int], None] | None = None,
    rank: int = 0, world_size: int = 1,
) -> int:
    """Write keys.npy (N, D) float16 and values.npy (N,) int32 into `out`; returns N.

    Under `accelerate launch` each process takes every `world_size`-th batch and writes its own
    rows of the same memory-mapped files (one progress file per rank).
    """
    n_rows = len(tokens) - 1
    dim = _hidden_size(model)
    keys_path, values_path = out / "keys.npy", out / "values.npy"
    if rank == 0 and not keys_path.exists():
        np.lib.format.open_memmap(keys_path, mode="w+", dtype=np.float16, shape=(n_rows, dim)).flush()
        np.lib.format.open_memmap(values_path, mode="w+", dtype=np.int32, shape=(n_rows,)).flush()
    _barrier(world_size)
    keys = np.load(keys_path, mmap_mode="r+")
    values = np.load(values_path, mmap_mode="r+")
    # a run resumed with another number of processes starts over (the batches are dealt differently)
    progress_path = out / (f"progress-{rank}.json" if world_size == 1 else f"progress-{rank}-of-{world_size}.json")
    done = json.loads(progress_path.read_text())["batches_done"] if progress_path.exists() else 0
    model.eval().to(device)
    all_batches = list(_batches(blocks(len(tokens), block_size), batch_size))
    since_flush, dirty = 0, [n_rows, 0]  # rows written since the last flush: [first, stop)
    for bi, batch in enumerate(all_batches):
        if bi % world_size != rank:
            continue
        rows = sum(b - a for a, b in batch)
        if bi < done:
            if progress is not None:
                progress(rows)
            continue
        ids = torch.as_tensor(np.stack([tokens.slice(a, b) for a, b in batch]))
        h = last_ffn_inputs(model, ids.to(device))  # (B, T, D)
        for (a, b), hb in zip(batch, h):
            keys[a:b] = hb.float().cpu().numpy().astype(np.float16)
            values[a:b] = tokens.slice(a + 1, b + 1).astype(np.int32)
        since_flush += rows
        dirty = [min(dirty[0], batch[0][0]), max(dirty[1], batch[-1][1])]
        if since_flush >= FLUSH_EVERY_ROWS or bi >= len(all_batches) - world_size:
            keys.flush()
            values.flush()
            atomic_write_json(progress_path, {"batches_done": bi + 1}, indent=1)
            release_rows(keys, *dirty)  # on disk now: out of this process's RSS
            since_flush, dirty = 0, [n_rows, 0]
        if progress is not None:
            progress(rows)
    keys.flush()
    values.flush()
    _barrier(world_size)
    return n_rows


def _hidden_size(model: torch.nn.Module) -> int:
    cfg = model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(cfg, name, None), int):
            return int(getattr(cfg, name))
    raise UnsupportedArchitectureError(f"cannot read the hidden size of {type(model).__name__}")


def _barrier(world_size: int) -> None:
    if world_size > 1:  # the process group joined by memreg.train.distributed.Dist.from_env
        import torch.distributed as dist

        dist.barrier()


def release_rows(array: np.ndarray, start: int, stop: int) -> None:
    """Drop rows [start, stop) of a memory-mapped array from this process's resident set (madvise
    MADV_DONTNEED on the pages that hold them): a file-backed page read or written (and flushed) once
    need not count in the RSS, and the page cache keeps it for a re-read. Nothing for an array in RAM
    or a copy-on-write map (whose pages would be lost)."""
    mm = getattr(array, "_mmap", None)
    if mm is None or getattr(array, "mode", None) not in ("r", "r+", "w+") or not hasattr(mm, "madvise"):
        return
    if stop <= start or array.ndim == 0 or not array.flags.c_contiguous:
        return
    origin = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    first = array.__array_interface__["data"][0] - origin + start * array.strides[0]
    lo = max(0, first // mmap.PAGESIZE * mmap.PAGESIZE)
    hi = min(len(mm), first + (stop - start) * array.strides[0])
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def open_datastore(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys (N, D) float16, values (N,) int32), memory-mapped read-only."""
    return np.load(folder / "keys.npy", mmap_mode="r"), np.load(folder / "values.npy", mmap_mode="r")
