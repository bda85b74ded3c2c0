"""Exact nearest-neighbour search in torch: what `memreg train --search torch` uses on a GPU, where
faiss-gpu is usually not installed (it is not on PyPI).

Squared L2 distances |q|^2 + |k|^2 - 2 q.k over blocks of keys, a running top-k per query, so memory
stays at (queries x block) whatever the datastore size. Keys may sit on the device in float16 or
bfloat16 (half the memory of float32; the datastore already stores float16), but every block is
cast to float32 before the product, so distances are float32 as in faiss's IndexFlatL2. On tie-free
data the neighbours equal IndexFlatL2's; distances agree to float32 rounding.

The object quacks like a faiss index where the kNN stage needs one: `ntotal` and `search(q, k)`.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_BLOCK_ROWS = 65_536


def resolve_search(search: str, device: torch.device | str) -> str:
    """'auto' is torch on a CUDA device (faiss-cpu would search on the host) and faiss elsewhere."""
    if search != "auto":
        return search
    return "torch" if torch.device(device).type == "cuda" else "faiss"


class TorchFlatIndex:
    """Exact L2 search over `keys` (N, D), a numpy array or memmap, on `device`."""

    def __init__(self, keys: np.ndarray, *, device: torch.device | str = "cpu", key_dtype: torch.dtype | None = None,
                 block_rows: int = DEFAULT_BLOCK_ROWS) -> None:
        self.device = torch.device(device)
        self.ntotal, self.d = int(keys.shape[0]), int(keys.shape[1])
        self.block_rows = block_rows
        # On CPU, half-precision matmuls are slow and the memmap is already in RAM's page cache:
        # keep the keys where they are and cast one block at a time. On a GPU, upload them once.
        if self.device.type == "cpu":
            self._keys, self._on_device = keys, False
        else:
            dtype = key_dtype or torch.float16
            self._keys = torch.empty((self.ntotal, self.d), dtype=dtype, device=self.device)
            for start in range(0, self.ntotal, block_rows):
                chunk = np.ascontiguousarray(keys[start : start + block_rows])
                self._keys[start : start + len(chunk)] = torch.from_numpy(chunk).to(self.device, dtype)
            self._on_device = True
        self._norms = [self._block(s).square().sum(1) for s in range(0, self.ntotal, block_rows)]

    def _block(self, start: int) -> torch.Tensor:
        """Keys [start, start + block_rows) as float32 on the device."""
        if self._on_device:
            return self._keys[start : start + self.block_rows].float()
        chunk = np.ascontiguousarray(self._keys[start : start + self.block_rows], dtype=np.float32)
        return torch.from_numpy(chunk)

    @torch.no_grad()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest keys of each query: squared distances (B, k) float32 ascending, ids (B, k) int64;
        -1 ids and +inf distances where fewer than k keys exist (as faiss)."""
        q = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32), device=self.device)
        qn = q.square().sum(1, keepdim=True)
        best_d = torch.full((len(q), k), float("inf"), device=self.device)
        best_i = torch.full((len(q), k), -1, dtype=torch.int64, device=self.device)
        for b, start in enumerate(range(0, self.ntotal, self.block_rows)):
            kb = self._block(start)
            d = (qn + self._norms[b][None, :] - 2.0 * (q @ kb.T)).clamp_(min=0.0)  # (B, block)
            ids = torch.arange(start, start + len(kb), device=self.device).expand(len(q), -1)
            cat_d, cat_i = torch.cat([best_d, d], 1), torch.cat([best_i, ids], 1)
            best_d, pos = torch.topk(cat_d, k, dim=1, largest=False, sorted=True)
            best_i = cat_i.gather(1, pos)
        best_i = torch.where(torch.isinf(best_d), torch.full_like(best_i, -1), best_i)
        return best_d.cpu().numpy(), best_i.cpu().numpy()
