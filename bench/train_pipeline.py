"""`memreg train`, stage by stage, measured on this machine (one run; the CPUs are shared, so read
the shares and ratios, not the absolute seconds).

    python bench/train_pipeline.py [--corpus /usr/share/common-licenses] [--steps 4]
        [--k 1024] [--queries 2048] [--big-keys 5000000] [--big-factory auto] [--big-on-disk auto]
        [--big-knn-rows 2048] [--big-brute-queries 128] [--threads 2] [--work-dir /tmp/memreg-bench-train]
        [--only all|big] [--skip-big] [--out FILE]

A. End to end, real: `memreg.train.train` on real text (default /usr/share/common-licenses) with the
   shipped models (teacher models/memreg-base-large, init models/memreg-base-small), a fresh work
   folder, default settings except --steps/--k. For each stage (tokenize, datastore, index, kNN
   targets, training, evaluation, package): seconds, tokens per second, share of the total, peak
   resident memory of the process during the stage (VmRSS and anonymous RSS, sampled every 20 ms).
   Tokens per stage: tokenize = tokens written; datastore/index/kNN = datastore rows; training =
   steps x batch x block; evaluation = held-out tokens x 3 models scored.
B. kNN-target search, faiss against brute force on the same keys (same run): the datastore of A,
   --queries of its rows, the index the pipeline built (nprobe tuned to recall 0.9 as memreg train
   does; the older candidate-count nprobe recorded too) and faiss IndexFlatL2, against memreg's
   torch exact search (`--search torch`: key blocks, running top-k); seconds, ratio, recall.
C. The data stages at --big-keys keys of dim 320 (the teacher's width), one child process per stage:
   peak resident memory (VmHWM) and keys per second of the datastore writer, the index (training
   on its sample, adding every key), the kNN targets and an exact top-k; see bench/train_pipeline_big.py.
   Training and evaluation read the kNN targets one batch at a time, so their memory does not grow
   with the datastore: measured in A. `--only big` runs C alone (10 M keys: README, "Datastores larger than RAM").
Writes bench/results/train_pipeline.json (`--only big`: bench/results/train_pipeline_big.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "models" / "memreg-base-large"
INIT = REPO / "models" / "memreg-base-small"


# ------------------------------------------------------------------------------------ memory
def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """Samples VmRSS and RssAnon every `every` s; `window()` gives the peaks since the last call."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak_rss, self.peak_anon = every, 0, 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.every)

    def sample(self) -> None:
        rss, anon = status_kb("VmRSS"), status_kb("RssAnon")
        with self._lock:
            self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)

    def window(self) -> dict:
        self.sample()
        with self._lock:
            out = {"peak_rss_mib": self.peak_rss / 1024, "peak_anon_rss_mib": self.peak_anon / 1024}
            self.peak_rss, self.peak_anon = status_kb("VmRSS"), status_kb("RssAnon")
        return out

    def stop(self) -> None:
        self._stop.set()


# ------------------------------------------------------------------------------------ A. end to end
def end_to_end(args, work: Path) -> dict:
    from memreg.train import TrainConfig, TrainProgress, train

    class Recorder(TrainProgress):
        def __init__(self, sampler: RssSampler) -> None:
            self.sampler, self.stages, self.current = sampler, [], None
            self.t_mark = time.perf_counter()

        def stage(self, name, *, total, unit, cached=False):
            now = time.perf_counter()
            gap = now - self.t_mark
            mem = self.sampler.window()
            if self.current is None:  # before the first stage: load tokenizers, read and hash the corpus
                self.stages.append({"stage": "setup (read corpus, check tokenizers)", "seconds": gap, **mem})
            self.current = {"stage": name, "total": total, "unit": unit, "cached": cached, "t0": now}

        def note(self, message, *, warning=False):
            print(f"    note: {message}", flush=True)

        def end_stage(self):
            now = time.perf_counter()
            cur = self.current
            cur["seconds"] = now - cur.pop("t0")
            cur.update(self.sampler.window())
            self.stages.append(cur)
            print(f"    {cur['stage']:12} {cur['seconds']:7.1f} s  peak RSS {cur['peak_rss_mib']:.0f} MiB", flush=True)
            self.t_mark = now

    shutil.rmtree(work, ignore_errors=True)
    cfg = TrainConfig(corpus=[str(c) for c in args.corpus], teacher=str(TEACHER), init=str(INIT),
                      out=work / "package", work_dir=work / "work", steps=args.steps, k=args.k, seed=0,
                      name="bench-memory", version="0.0.1", domain=["law"])
    sampler = RssSampler()
    rec = Recorder(sampler)
    t0 = time.perf_counter()
    result = train(cfg, progress=rec)
    wall = time.perf_counter() - t0
    sampler.stop()
    rows = result.datastore_size
    block = result.block_size
    tokens = {
        "tokenize": result.corpus_tokens + result.eval_tokens,
        "datastore": rows, "index": rows, "knn targets": rows,
        "train": result.steps * cfg.batch_size * cfg.grad_accum * block,
        "evaluate": 3 * max(0, result.eval_tokens - 1),
    }
    total = sum(s["seconds"] for s in rec.stages)
    for s in rec.stages:
        n = tokens.get(s["stage"])
        s["tokens"] = n
        s["tokens_per_s"] = n / s["seconds"] if n and s["seconds"] > 0 else None
        s["share"] = s["seconds"] / total
    return {"config": {k: str(v) if isinstance(v, Path) else v for k, v in cfg.model_dump().items()},
            "result": result.to_json(), "stages": rec.stages, "wall_seconds": wall,
            "stage_seconds_total": total, "work_dir": str(cfg.resolved_work_dir())}


# ------------------------------------------------------------------------------------ B. faiss vs brute force
def exact_topk(queries, keys, k: int, chunk: int = 500_000):
    """Exact search as `memreg train --search torch` does it (memreg.train.torch_search), on the CPU."""
    from memreg.train.torch_search import TorchFlatIndex

    return TorchFlatIndex(keys, block_rows=chunk).search(queries, k)


def recall(approx_ids, exact_ids) -> float:
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx_ids, exact_ids))
    return hits / exact_ids.size


def search_comparison(args, e2e: dict) -> dict:
    import faiss
    import numpy as np

    from memreg.train.datastore import open_datastore
    from memreg.train.index import load_index, set_nprobe, tune_nprobe

    work = Path(e2e["work_dir"])
    ds = sorted(work.glob("datastore-*"))[-1]
    keys, _ = open_datastore(ds)
    k = int(e2e["result"]["k"])
    index = load_index(sorted(work.glob("index-*"))[-1] / "index.faiss")
    nprobe, sample_recall = tune_nprobe(index, keys, k=k + 1, goal=0.9)  # what memreg train now picks
    heuristic_nprobe = set_nprobe(load_index(sorted(work.glob("index-*"))[-1] / "index.faiss"), None, k=k)
    rows = np.arange(min(args.queries, len(keys)))
    q = np.ascontiguousarray(keys[rows], dtype=np.float32)
    out = {"datastore_keys": int(len(keys)), "dim": int(keys.shape[1]), "queries": int(len(rows)), "k_plus_self": k + 1,
           "pipeline_index": e2e["result"]["index"], "nprobe": nprobe, "nprobe_sample_recall": sample_recall,
           "nprobe_before_recall_goal": heuristic_nprobe}
    t = time.perf_counter()
    ex_d, ex_i = exact_topk(q, keys, k + 1)
    out["brute_force_torch_s"] = time.perf_counter() - t
    t = time.perf_counter()
    _, pi = index.search(q, k + 1)
    out["faiss_pipeline_index_s"] = time.perf_counter() - t
    flat = faiss.IndexFlatL2(keys.shape[1])
    flat.add(np.ascontiguousarray(keys, dtype=np.float32))
    t = time.perf_counter()
    _, fi = flat.search(q, k + 1)
    out["faiss_flat_s"] = time.perf_counter() - t
    out["recall_pipeline_index_vs_exact"] = recall(pi, ex_i)
    out["recall_faiss_flat_vs_exact"] = recall(fi, ex_i)
    out["brute_force_over_faiss_pipeline_index"] = out["brute_force_torch_s"] / out["faiss_pipeline_index_s"]
    out["brute_force_over_faiss_flat"] = out["brute_force_torch_s"] / out["faiss_flat_s"]
    return out


# ------------------------------------------------------------------------------------ main
def main() -> None:
    args = parse_args()
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    e2e = search = big = None
    if args.only == "all":
        print("A. memreg train, end to end (fresh work folder)", flush=True)
        e2e = end_to_end(args, work / "e2e")
        print("B. kNN search: faiss vs brute force on the same keys", flush=True)
        search = search_comparison(args, e2e)
    if not args.skip_big:
        from train_pipeline_big import run_big

        print(f"C. the data stages at {args.big_keys:,} keys of dim {args.dim} (one child process each)", flush=True)
        big = run_big(args)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"torch_threads": args.threads, "cpus": os.cpu_count(), "torch": torch.__version__,
                    "faiss": faiss.__version__,
                    "note": "2 CPU cores shared with other people's jobs (load averages in big_datastore): absolute "
                            "times drift between runs; shares and ratios are from one run"},
        "end_to_end": e2e, "search_faiss_vs_brute_force": search, "big_datastore": big,
        "wall_seconds": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    if e2e is not None:
        print_table(result)
    if big is not None:
        from train_pipeline_big import print_big

        print_big(big, dim=args.dim, k=args.k)
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", nargs="+", default=["/usr/share/common-licenses"])
    ap.add_argument("--steps", type=int, default=4, help="training steps (batch 8 x block 512)")
    ap.add_argument("--k", type=int, default=1024, help="neighbours (the paper's 1024)")
    ap.add_argument("--queries", type=int, default=2048, help="B: queries for faiss vs brute force")
    ap.add_argument("--big-keys", type=int, default=5_000_000)
    ap.add_argument("--dim", type=int, default=320, help="C: key width (memreg-base-large's n_embd)")
    ap.add_argument("--big-factory", default="auto", help="C: faiss factory, or 'auto' (the pipeline's choice)")
    ap.add_argument("--big-on-disk", choices=("auto", "yes", "no"), default="auto",
                    help="C: inverted lists on disk (auto: when they outgrow the pipeline's 4 GiB memory budget)")
    ap.add_argument("--big-knn-rows", type=int, default=2048)
    ap.add_argument("--big-brute-queries", type=int, default=128)
    ap.add_argument("--only", choices=("all", "big"), default="all", help="big: part C alone")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work-dir", default="/tmp/memreg-bench-train")
    ap.add_argument("--out", default=None, help="default bench/results/train_pipeline.json (--only big: "
                    "train_pipeline_big.json, so that a run of C alone never overwrites A and B)")
    args = ap.parse_args()
    if args.only == "big" and args.skip_big:
        ap.error("--only big runs C alone: drop --skip-big")
    name = "train_pipeline_big.json" if args.only == "big" else "train_pipeline.json"
    args.out = args.out or str(REPO / "bench" / "results" / name)
    return args


def print_table(r: dict) -> None:
    e = r["end_to_end"]
    res = e["result"]
    print(f"\nA. memreg train on {', '.join(e['config']['corpus'])}: {res['corpus_tokens']:,} train + {res['eval_tokens']:,} "
          f"held-out tokens, datastore {res['datastore_size']:,} keys, index {res['index']}, k {res['k']}, "
          f"{res['steps']} steps")
    print(f"{'stage':38} {'seconds':>8} {'share':>6} {'tokens/s':>10} {'peak RSS MiB':>12} {'anon MiB':>9}")
    for s in e["stages"]:
        tps = f"{s['tokens_per_s']:10.0f}" if s.get("tokens_per_s") else f"{'-':>10}"
        print(f"{s['stage']:38} {s['seconds']:8.1f} {100 * s['share']:5.1f}% {tps} {s['peak_rss_mib']:12.0f} "
              f"{s['peak_anon_rss_mib']:9.0f}")
    print(f"{'total':38} {e['stage_seconds_total']:8.1f}")
    s = r["search_faiss_vs_brute_force"]
    print(f"\nB. {s['queries']} queries x {s['datastore_keys']:,} keys, top {s['k_plus_self']}: memreg's torch exact search "
          f"(--search torch) {s['brute_force_torch_s']:.2f} s; faiss {s['pipeline_index']} (nprobe {s['nprobe']}, "
          f"sample recall {s.get('nprobe_sample_recall', float('nan')):.3f}) "
          f"{s['faiss_pipeline_index_s']:.2f} s -> torch/faiss {s['brute_force_over_faiss_pipeline_index']:.2f}x, "
          f"recall {s['recall_pipeline_index_vs_exact']:.3f}; faiss Flat {s['faiss_flat_s']:.2f} s -> "
          f"{s['brute_force_over_faiss_flat']:.2f}x")

if __name__ == "__main__":
    main()
