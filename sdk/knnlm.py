"""kNN-LM (Khandelwal et al. 2020) over a memreg datastore: the baseline a memory decoder replaces.

At inference the *key model* (the teacher that built the datastore) reads the context, its
`last_ffn_input` at each position queries the faiss index, and p_kNN = softmax(-d / T) summed per
token is mixed with any base of the same tokenizer by the usual rule (memreg.mixture):
p = (1 - w) p_base + w p_kNN. Unlike the memory decoder this needs the datastore, the index and a
second forward pass of the teacher, plus a search per token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class KNNLM:
    key_model: torch.nn.Module  # the model whose last_ffn_input built the datastore
    index: Any  # faiss index over the datastore keys, or a TorchFlatIndex (same search())
    values: np.ndarray  # (N,) int32 next-token ids
    k: int
    temperature: float
    vocab_size: int

    @classmethod
    def from_work_dir(cls, work_dir: str | Path, *, device: str = "cpu", nprobe: int | None = None) -> "KNNLM":
        """Load the datastore, index and kNN settings of a finished (or past stage 4) `memreg train` run."""
        from memreg.gguf import resolve_model_ref
        from memreg.models import load_causal_lm, load_tokenizer
        from memreg.train.index import load_index, set_nprobe

        work = Path(work_dir)
        run = json.loads((work / "run.json").read_text())
        knn_meta = json.loads(_one(work, "knn") .joinpath("meta.json").read_text())
        teacher = resolve_model_ref(run["settings"]["teacher"])  # a .gguf teacher: its converted folder
        index_file = _one(work, "index") / "index.faiss"
        if index_file.exists():
            index = load_index(index_file)
            set_nprobe(index, nprobe if nprobe is not None else knn_meta.get("nprobe"), k=knn_meta["k"])
        else:  # the run searched with torch (--search torch): exact search over the keys
            from memreg.train.torch_search import TorchFlatIndex

            keys = np.load(_one(work, "datastore") / "keys.npy", mmap_mode="r")
            index = TorchFlatIndex(keys, device=device)
        return cls(
            key_model=load_causal_lm(teacher, device=device),  # float32, as the datastore was built
            index=index,
            values=np.asarray(np.load(_one(work, "datastore") / "values.npy", mmap_mode="r")),
            k=int(knn_meta["k"]), temperature=float(knn_meta["temperature"]),
            vocab_size=len(load_tokenizer(teacher)),
        )

    @torch.no_grad()
    def log_probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) log p_kNN of the next token at every position (-inf off the support)."""
        from memreg.train.datastore import last_ffn_inputs
        from memreg.train.knn import knn_sparse

        device = next(self.key_model.parameters()).device
        h = last_ffn_inputs(self.key_model, input_ids.to(device))  # (B, T, D)
        q = h.reshape(-1, h.shape[-1]).float().cpu().numpy()
        dists, ids = self.index.search(np.ascontiguousarray(q), self.k)
        no_self = np.full(len(q), -1)  # queries are new text: nothing to exclude
        tokens, probs = knn_sparse(dists, ids, no_self, self.values, k=self.k, temperature=self.temperature)
        p = torch.zeros(len(q), self.vocab_size, dtype=torch.float64).scatter_add_(1, tokens, probs)
        return torch.log(p).float().reshape(*input_ids.shape, self.vocab_size).to(input_ids.device)

    def target_log_probs(self, ids: Any, *, context: int = 512, stride: int = 256, progress=None) -> np.ndarray:
        """log p_kNN(x_t | x_<t) for t = 1 .. len-1, sliding windows as memreg.evaluate.target_log_probs."""
        from memreg.evaluate import target_log_probs

        return target_log_probs(_AsLM(self), ids, context=context, stride=stride, batch_size=1, progress=progress)


class _AsLM(torch.nn.Module):
    """Adapter so memreg.evaluate scores the kNN distribution like a causal LM's logits."""

    def __init__(self, knn: KNNLM) -> None:
        super().__init__()
        self.knn = knn
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # gives a device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return _Out(self.knn.log_probs(input_ids))


@dataclass
class _Out:
    logits: torch.Tensor


def _one(work: Path, stage: str) -> Path:
    found = sorted(p for p in work.glob(f"{stage}-*") if (p / "meta.json").exists())
    if not found:
        from memreg.core.errors import MemregError

        raise MemregError(f"{work} has no finished {stage} stage: run `memreg train` with this --work-dir first")
    return found[-1]
