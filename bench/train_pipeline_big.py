"""Part C of bench/train_pipeline.py: the data stages of `memreg train` on a datastore of --big-keys
keys (10 M: 6.4 GB of fp16 keys at the teacher's width 320), one child process per stage, each
child's own peak resident memory (VmHWM, file-backed pages of the memory-mapped keys included) and
its keys per second.

    python bench/train_pipeline.py --only big --big-keys 10000000 [--big-factory auto] [--big-on-disk auto]
        [--big-knn-rows 2048] [--big-brute-queries 128] [--k 1024] [--threads 2] [--out FILE]

datastore   the real `build_datastore` writing memory-mapped fp16 keys, fed by a stub key model that
            emits random keys (no teacher forward over 10 M tokens); keys/s = rows written per second.
index       the real `build_index`: factory --big-factory ('auto': `choose_factory`, what `memreg
            train` picks, with its 4 GiB memory budget), inverted lists on disk or not as
            `choose_on_disk` decides (--big-on-disk auto) or as asked; the quantizers are trained on
            the pipeline's own sample (40 keys per IVF list), then every key is added in chunks.
            Train keys/s = sample keys per second of training, add keys/s = datastore keys per second.
knn         the real `build_targets` (k = --k) for the first --big-knn-rows rows, searching the whole
            index at the candidate-count nprobe (the older default; the recall-goal tuner would raise
            it on these random keys, see below); rows/s, extrapolated to all rows.
bruteforce  exact top-k (memreg's torch search, key blocks) of --big-brute-queries rows over all keys,
            against the faiss index: seconds, and recall@k of the index at a few nprobe values.

The keys are random Gaussian: the worst case for an IVF index (no clusters), so recall here is a
floor, while the speeds barely depend on the data. faiss's OpenMP threads wait passively
(OMP_WAIT_POLICY=PASSIVE, unless set): on a shared machine its spinning threads lose whole time
slices (IVF-PQ training 3x slower in a check).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from train_pipeline import RssSampler, exact_topk, recall, status_kb

STAGES = ("datastore", "index", "knn", "bruteforce")
MEMORY_BUDGET_MB = 4096  # TrainConfig's default
RECALL_NPROBES = (8, 64, 512)


class StubKeyModel:
    """Stands in for the teacher in build_datastore: random keys at its last MLP's input, no network."""

    @staticmethod
    def make(dim: int):
        import torch
        from torch import nn

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.mlp = nn.Identity()

        class Stub(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.config = type("Cfg", (), {"hidden_size": dim})()
                self.transformer = nn.Module()
                self.transformer.h = nn.ModuleList([Block()])
                self.gen = torch.Generator().manual_seed(0)

            def forward(self, input_ids, attention_mask=None, use_cache=False):
                x = torch.randn(*input_ids.shape, dim, generator=self.gen)
                return self.transformer.h[-1].mlp(x)

        return Stub()


class ReleasedKeys:
    """Memory-mapped keys read block by block (by the torch exact search), each block's pages dropped
    from the RSS once copied: what build_index and build_targets do with the keys they read."""

    def __init__(self, keys) -> None:
        self.keys, self.shape = keys, keys.shape

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, item):
        import numpy as np

        from memreg.train.datastore import release_rows

        out = np.array(self.keys[item])
        if isinstance(item, slice):
            start, stop, _ = item.indices(len(self.keys))
            release_rows(self.keys, start, stop)
        return out


# ------------------------------------------------------------------------------------ the children
def _datastore(args, big: Path, res: dict) -> float:
    import numpy as np

    from memreg.train.corpus import TokenArray
    from memreg.train.datastore import build_datastore

    shutil.rmtree(big, ignore_errors=True)
    (big / "corpus").mkdir(parents=True)
    (big / "ds").mkdir()
    rng = np.random.default_rng(0)
    np.save(big / "corpus" / "train-00000.npy", rng.integers(0, 8192, size=args.big_keys + 1, dtype=np.uint32))
    t0 = time.perf_counter()
    res["rows"] = build_datastore(StubKeyModel.make(args.dim), TokenArray(big / "corpus", "train"), big / "ds",
                                  block_size=512, batch_size=8)
    res["keys_bytes"] = (big / "ds" / "keys.npy").stat().st_size
    res["values_bytes"] = (big / "ds" / "values.npy").stat().st_size
    return t0


def _index(args, big: Path, res: dict) -> float:
    from memreg.train.datastore import open_datastore
    from memreg.train.index import build_index, choose_factory, choose_on_disk, list_bytes

    keys, _ = open_datastore(big / "ds")
    n, dim = keys.shape
    res["pipeline_auto_factory"] = choose_factory(n, dim, memory_budget_mb=MEMORY_BUDGET_MB, flat_max_keys=50_000)
    res["factory"] = factory = res["pipeline_auto_factory"] if args.big_factory == "auto" else args.big_factory
    res["list_bytes"] = list_bytes(factory, n, dim)
    asked = {"auto": None, "yes": True, "no": False}[args.big_on_disk]
    res["on_disk"] = choose_on_disk(factory, n, dim, memory_budget_mb=MEMORY_BUDGET_MB, asked=asked)
    res["on_disk_asked"] = args.big_on_disk
    (big / "index").mkdir(exist_ok=True)
    t0, times = time.perf_counter(), {}
    build_index(keys, factory, big / "index" / "index.faiss", seed=0, on_disk=res["on_disk"], times=times)
    res["rows"] = n
    res.update({f"{k}_s" if k != "train_sample" else k: v for k, v in times.items()})
    res["train_sample_keys_per_s"] = times["train_sample"] / times["train"] if times["train"] > 0 else None
    res["add_keys_per_s"] = n / times["add"]
    res["index_bytes"] = sum(p.stat().st_size for p in (big / "index").iterdir())
    return t0


def _knn(args, big: Path, res: dict) -> float:
    from memreg.train.datastore import open_datastore
    from memreg.train.index import load_index, set_nprobe
    from memreg.train.knn import build_targets

    keys, values = open_datastore(big / "ds")
    index = load_index(big / "index" / "index.faiss")
    res["rss_after_index_load_mib"] = status_kb("VmRSS") / 1024
    res["nprobe"] = set_nprobe(index, None, k=args.k)
    out = big / "knn"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    n = min(args.big_knn_rows, len(keys))
    t0 = time.perf_counter()
    build_targets(index, keys[:n], values, out, k=args.k, temperature=1.0, vocab_size=8192, support=64,
                  batch_size=1024)
    res["rows"] = n
    res["rows_total"] = len(keys)
    return t0


def _bruteforce(args, big: Path, res: dict) -> float:
    import numpy as np

    from memreg.train.datastore import open_datastore
    from memreg.train.index import load_index, set_nprobe

    keys, _ = open_datastore(big / "ds")
    index = load_index(big / "index" / "index.faiss")
    rows = np.arange(args.big_brute_queries) * (len(keys) // args.big_brute_queries)
    q = np.ascontiguousarray(keys[rows], dtype=np.float32)
    t0 = time.perf_counter()
    _, exact = exact_topk(q, ReleasedKeys(keys), args.k + 1)
    res["brute_force_torch_s"] = time.perf_counter() - t0
    res["queries"] = len(rows)
    res["recall_at_nprobe"] = {}
    for asked in (set_nprobe(index, None, k=args.k), *RECALL_NPROBES):
        nprobe = set_nprobe(index, asked, k=args.k)  # capped at the number of lists
        t = time.perf_counter()
        _, ids = index.search(q, args.k + 1)
        res["recall_at_nprobe"][str(nprobe)] = {"recall": recall(ids, exact), "faiss_s": time.perf_counter() - t}
    default = res["recall_at_nprobe"][str(set_nprobe(index, None, k=args.k))]
    res["faiss_s"], res["recall_faiss_vs_exact"] = default["faiss_s"], default["recall"]
    res["brute_force_over_faiss"] = res["brute_force_torch_s"] / res["faiss_s"]
    return t0


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    big = Path(args.work_dir) / "big"
    sampler = RssSampler()
    res: dict = {"stage": args.child}
    t0 = {"datastore": _datastore, "index": _index, "knn": _knn, "bruteforce": _bruteforce}[args.child](args, big, res)
    res["seconds"] = time.perf_counter() - t0
    if "rows" in res:
        res["rows_per_s"] = res["rows"] / res["seconds"]
    res["peak_rss_mib"] = status_kb("VmHWM") / 1024  # this process's own high-water mark
    res["peak_anon_rss_mib"] = sampler.window()["peak_anon_rss_mib"]
    sampler.stop()
    print("RESULT " + json.dumps(res), flush=True)


# ------------------------------------------------------------------------------------ the parent
def run_child(args, stage: str) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--work-dir", args.work_dir, "--big-keys", str(args.big_keys),
           "--big-factory", args.big_factory, "--big-on-disk", args.big_on_disk, "--big-knn-rows",
           str(args.big_knn_rows), "--k", str(args.k), "--big-brute-queries", str(args.big_brute_queries),
           "--threads", str(args.threads), "--dim", str(args.dim)]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"child {stage} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    print(f"    {stage:10} {res['seconds']:7.1f} s  peak RSS {res['peak_rss_mib']:.0f} MiB "
          f"(anon {res['peak_anon_rss_mib']:.0f} MiB)", flush=True)
    return res


def run_big(args) -> dict:
    """Every child in turn; the per-stage keys/s summary; the big files deleted afterwards."""
    work = Path(args.work_dir)
    big = {"load_average_before": os.getloadavg()}
    try:
        for stage in STAGES:
            big[stage] = run_child(args, stage)
    finally:
        shutil.rmtree(work / "big", ignore_errors=True)
    big["load_average_after"] = os.getloadavg()
    ds, ix, knn, bf = (big[s] for s in STAGES)
    knn["extrapolated_all_rows_s"] = knn["rows_total"] / knn["rows_per_s"]
    big["keys_per_s"] = {"datastore write": ds["rows_per_s"], "index train (sample keys)": ix["train_sample_keys_per_s"],
                         "index add": ix["add_keys_per_s"], "knn query rows": knn["rows_per_s"],
                         "brute force queries": bf["queries"] / bf["brute_force_torch_s"]}
    big["peak_rss_mib"] = {s: big[s]["peak_rss_mib"] for s in STAGES}
    big["disk_bytes"] = {"keys": ds["keys_bytes"], "values": ds["values_bytes"], "index": ix["index_bytes"]}
    return big


def print_big(b: dict, *, dim: int, k: int) -> None:
    ds, ix, kn, bf = (b[s] for s in STAGES)
    where = "lists on disk (index.ivfdata)" if ix["on_disk"] else "lists in RAM"
    print(f"\nC. {ds['rows']:,} keys x {dim} fp16 ({ds['keys_bytes'] / 2**30:.2f} GiB on disk), index {ix['factory']} "
          f"(auto: {ix['pipeline_auto_factory']}), {where}, {ix['index_bytes'] / 2**20:.0f} MiB; trained on "
          f"{ix['train_sample']:,} keys in {ix['train_s']:.0f} s, filled in {ix['add_s']:.0f} s")
    print(f"{'stage (child process)':38} {'seconds':>8} {'keys/s':>10} {'peak RSS MiB':>12} {'anon MiB':>9}")
    rows = [("datastore (stub keys, real writer)", ds, ds["rows_per_s"]),
            ("index train (sample) + add", ix, ix["add_keys_per_s"]),
            (f"kNN targets ({kn['rows']:,} rows, k {k}, nprobe {kn['nprobe']})", kn, kn["rows_per_s"]),
            (f"exact top-k, {bf['queries']} queries", bf, None)]
    for label, c, rate in rows:
        rps = f"{rate:10.0f}" if rate else f"{'-':>10}"
        print(f"{label:38} {c['seconds']:8.1f} {rps} {c['peak_rss_mib']:12.0f} {c['peak_anon_rss_mib']:9.0f}")
    print(f"kNN targets for all {kn['rows_total']:,} rows extrapolated: {kn['extrapolated_all_rows_s'] / 3600:.1f} h; "
          f"{bf['queries']} queries over all keys: brute force {bf['brute_force_torch_s']:.1f} s; faiss recall@{k + 1} "
          + ", ".join(f"nprobe {p}: {r['recall']:.3f} ({r['faiss_s']:.1f} s)" for p, r in bf["recall_at_nprobe"].items()))


def child_main() -> None:
    ap = argparse.ArgumentParser()
    for name, kind in (("--child", str), ("--work-dir", str), ("--big-keys", int), ("--big-factory", str),
                       ("--big-on-disk", str), ("--big-knn-rows", int), ("--k", int), ("--big-brute-queries", int),
                       ("--threads", int), ("--dim", int)):
        ap.add_argument(name, type=kind, required=True)
    child(ap.parse_args())


if __name__ == "__main__":
    child_main()
