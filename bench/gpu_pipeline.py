"""`memreg train` at GPU scale with SmolLM2-135M as teacher: a datastore of >= 5 M tokens, exact kNN
targets by the torch search (no faiss), a truncated-SmolLM2 memory trained for a fixed budget; the
wall time and throughput of every stage. Part (a) of bench/gpu_pipeline.sh (see its header).

    python bench/gpu_pipeline.py --smollm2 .device/gpu/smollm2 --device cuda --out-json $OUT/pipeline.json

Corpus: Python sources of this machine's interpreter (standard library, then site-packages), in a
fixed order, until the SmolLM2 token count reaches --tokens (measured exactly by the corpus stage
and reported). The run is `memreg.train` itself (TrainConfig with search="torch"), with a progress
object that times each stage and prints its throughput every --report-every seconds. During the
kNN stage the search calls are timed apart from the rest (turning distances into sparse targets,
on the CPU). TF32 is switched on for the kNN stage only (`--tf32-search`, default on): the keys are
float16, exactly representable in TF32, so the distance products are the float32 ones (up to
summation order), as the exact search requires.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import log, resolve_smollm2  # noqa: E402


class StageClock:
    """TrainProgress that records every stage's wall time and units, printing throughput as it goes."""

    def __init__(self, report_every: float, device: str, tf32_search: bool):
        self.stages: list[dict] = []
        self.report_every, self.device, self.tf32_search = report_every, device, tf32_search
        self._cur: dict | None = None
        self._tf32_before = None

    def stage(self, name, *, total=None, unit="", cached=False):
        self._cur = {"stage": name, "total": total, "unit": unit, "cached": cached, "done": 0,
                     "t0": time.monotonic(), "last_print": time.monotonic()}
        log(f"[stage] {name}{' (cached)' if cached else ''}: {total} {unit}")
        if name == "knn targets" and self.tf32_search and self.device.startswith("cuda"):
            import torch

            self._tf32_before = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True

    def advance(self, n=1, **info):
        c = self._cur
        if c is None:
            return
        c["done"] += n
        now = time.monotonic()
        if now - c["last_print"] >= self.report_every:
            c["last_print"] = now
            el = now - c["t0"]
            rate = c["done"] / el if el > 0 else 0.0
            eta = (c["total"] - c["done"]) / rate if rate and c["total"] else float("nan")
            extra = " ".join(f"{k}={v:.3g}" for k, v in info.items() if isinstance(v, float))
            log(f"  {c['stage']}: {c['done']:,}/{c['total']:,} {c['unit']} in {el:.0f} s, {rate:,.1f} {c['unit']}/s, "
                f"ETA {eta:.0f} s {extra}")

    def note(self, message, *, warning=False):
        log(f"  {'warning' if warning else 'note'}: {message}")

    def interrupted(self) -> dict:
        """The stage under way when the run was stopped: done so far, rate, projected total seconds."""
        c = dict(self._cur or {"stage": None, "done": 0, "total": None, "unit": "", "t0": time.monotonic()})
        c["seconds"] = round(time.monotonic() - c.pop("t0"), 3)
        c.pop("last_print", None)
        c["per_second"] = round(c["done"] / c["seconds"], 2) if c["seconds"] > 0 else None
        c["projected_total_s"] = round(c["total"] / c["per_second"], 1) if c["per_second"] and c["total"] else None
        c["interrupted"] = True
        return c

    def end_stage(self):
        c = self._cur
        if c is None:
            return
        c["seconds"] = round(time.monotonic() - c.pop("t0"), 3)
        c.pop("last_print")
        c["per_second"] = round(c["done"] / c["seconds"], 2) if c["seconds"] > 0 else None
        self.stages.append(c)
        log(f"[stage] {c['stage']} done: {c['seconds']:.1f} s, {c['done']:,} {c['unit']}"
            + (f", {c['per_second']:,.1f} {c['unit']}/s" if c["per_second"] else ""))
        if self._tf32_before is not None:
            import torch

            torch.backends.cuda.matmul.allow_tf32 = self._tf32_before
            self._tf32_before = None
        self._cur = None


class SearchClock:
    """Times TorchFlatIndex.search (the GPU part of the kNN stage) inside memreg's own kNN stage."""

    def __init__(self):
        from memreg.train import torch_search

        self.cls, self.orig = torch_search.TorchFlatIndex, torch_search.TorchFlatIndex.search
        self.seconds, self.calls, self.queries = 0.0, 0, 0
        clock = self

        def search(index, queries, k):
            t = time.perf_counter()
            out = clock.orig(index, queries, k)  # returns host arrays: the device work is finished
            clock.seconds += time.perf_counter() - t
            clock.calls += 1
            clock.queries += len(queries)
            return out

        self.cls.search = search

    def restore(self):
        self.cls.search = self.orig


def python_sources() -> list[Path]:
    """Python files of this interpreter: the standard library, then site-packages (fixed order)."""
    out: list[Path] = []
    roots = dict.fromkeys(Path(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib", "platlib"))
    for root in roots:
        if root.is_dir():
            out += sorted(p for p in root.rglob("*.py") if p.is_file())
    return out


def build_corpus(tok, n_tokens: int, out: Path, max_doc_bytes: int = 64_000, eval_fraction: float = 0.0) -> dict:
    """out (JSONL): source files until their estimated token count reaches n_tokens after the held-out
    share (bytes per token measured on the first ~2 MB). Cached: reused if it already holds enough."""
    meta_path = out.with_suffix(".json")
    if meta_path.exists() and json.loads(meta_path.read_text())["target_tokens"] >= n_tokens:
        return json.loads(meta_path.read_text())
    t0 = time.monotonic()
    seen: set[int] = set()
    docs, sample_bytes, sample_tokens, total_bytes = [], 0, 0, 0
    files = python_sources()
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")[:max_doc_bytes]
        except (OSError, UnicodeDecodeError):
            continue
        h = hash(text)
        if len(text) < 200 or h in seen:
            continue
        seen.add(h)
        docs.append({"text": text, "source": str(p)})
        b = len(text.encode())
        total_bytes += b
        if sample_bytes < 2_000_000:
            sample_bytes += b
            sample_tokens += len(tok(text, add_special_tokens=False)["input_ids"]) + 1
        if total_bytes * sample_tokens / sample_bytes >= n_tokens * 1.03 / (1.0 - eval_fraction):
            break
    est = int(total_bytes / (sample_bytes / max(1, sample_tokens)))
    if est < n_tokens:
        log(f"warning: the Python sources here give only ~{est:,} tokens (< {n_tokens:,})")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        for d in docs:
            fh.write(json.dumps(d) + "\n")
    meta = {"documents": len(docs), "bytes": total_bytes, "estimated_tokens": est, "target_tokens": n_tokens,
            "bytes_per_token_sample": round(sample_bytes / max(1, sample_tokens), 3), "files_scanned": len(files),
            "seconds": round(time.monotonic() - t0, 2)}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smollm2", default="auto", help="SmolLM2 folder, .gguf, parts folder or shape-only folder (bench/gpu_common.py)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=5_000_000, help="datastore size target (training tokens)")
    ap.add_argument("--init-layers", type=int, default=4, help="blocks of SmolLM2 the memory keeps")
    ap.add_argument("--teacher-layers", type=int, default=None,
                    help="rehearsal only: the teacher is SmolLM2 cut to its first N blocks (a CPU cannot run all 30 quickly)")
    ap.add_argument("--k", type=int, default=None, help="neighbours [memreg's default: 1024]")
    ap.add_argument("--train-minutes", type=float, default=1.0, help="training budget (memreg train --max-minutes)")
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16, help="blocks per training micro-batch")
    ap.add_argument("--teacher-batch-size", type=int, default=64, help="blocks per teacher forward (datastore)")
    ap.add_argument("--search-batch-size", type=int, default=4096, help="queries per torch search call")
    ap.add_argument("--max-doc-bytes", type=int, default=64_000, help="each source file cut to this many bytes")
    ap.add_argument("--eval-fraction", type=float, default=0.01)
    ap.add_argument("--val-tokens", type=int, default=16_384)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--no-tf32-search", dest="tf32_search", action="store_false")
    ap.add_argument("--report-every", type=float, default=15.0, help="seconds between throughput lines")
    ap.add_argument("--work", default="/tmp/memreg-gpu-pipeline")
    ap.add_argument("--fresh", action="store_true", help="delete the work folder's training stages first")
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args(argv)

    import shutil

    import torch
    from transformers import AutoConfig, AutoTokenizer

    from memreg.train import TrainConfig, train

    t_start = time.monotonic()
    work = Path(args.work)
    if args.fresh:
        shutil.rmtree(work / "w", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    smol, how = resolve_smollm2(args.smollm2, work)
    resolve_s = time.monotonic() - t
    log(f"SmolLM2: {smol} ({how}; {resolve_s:.1f} s)")
    if args.teacher_layers:
        from memreg.train.truncate import write_truncated_init

        cut = work / f"smollm2-first{args.teacher_layers}"
        if not (cut / "config.json").exists():
            write_truncated_init(smol, args.teacher_layers, cut)
        smol, how = str(cut), f"{how}; cut to its first {args.teacher_layers} blocks (rehearsal)"
    tok = AutoTokenizer.from_pretrained(smol)
    corpus = build_corpus(tok, args.tokens, work / "corpus.jsonl", args.max_doc_bytes, args.eval_fraction)
    log(f"corpus: {corpus['documents']:,} Python files, {corpus['bytes'] / 1e6:.1f} MB, ~{corpus['estimated_tokens']:,} "
        f"SmolLM2 tokens (built in {corpus['seconds']:.1f} s)")

    cfg = TrainConfig(corpus=[str(work / "corpus.jsonl")], teacher=smol, init=smol, init_layers=args.init_layers,
                      out=work / "memory", work_dir=work / "w", name="gpu-pipeline", search="torch", device=args.device,
                      k=args.k, block_size=args.block_size, batch_size=args.batch_size,
                      teacher_batch_size=args.teacher_batch_size, search_batch_size=args.search_batch_size,
                      eval_fraction=args.eval_fraction, val_tokens=args.val_tokens, eval_every=args.eval_every,
                      epochs=1.0, max_minutes=args.train_minutes, checkpoint_every=10**9)
    clock = StageClock(args.report_every, args.device, args.tf32_search)
    search = SearchClock()
    res = interrupted = None

    def on_term(signum, frame):  # `timeout` ends a run over its budget: report what was measured
        raise _Interrupted()

    signal.signal(signal.SIGTERM, on_term)
    try:
        res = train(cfg, progress=clock)
    except _Interrupted:
        interrupted = clock.interrupted()
        log(f"interrupted (time budget) in stage {interrupted['stage']!r}")
    finally:
        search.restore()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    wall = time.monotonic() - t_start

    by = {s["stage"]: s for s in clock.stages}
    if interrupted:
        by.setdefault(interrupted["stage"], interrupted)
    rows = by.get("datastore", {}).get("total")
    block_tokens = args.batch_size * args.block_size
    train_stage = by.get("train", {})
    steps = res.steps if res else train_stage.get("done")
    knn = by.get("knn targets", {})
    dim = int(AutoConfig.from_pretrained(smol).hidden_size)  # the keys: the last MLP's input
    extra = res.card.training.extra if res else {}
    summary = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device,
        "torch": torch.__version__, "smollm2": how, "smollm2_resolve_s": round(resolve_s, 2),
        "corpus": corpus, "train_tokens": res.corpus_tokens if res else rows and rows + 1,
        "eval_tokens": res.eval_tokens if res else None, "datastore_rows": rows, "key_dim": dim,
        "k": res.k if res else args.k, "temperature": res.temperature if res else None,
        "index": res.index if res else "torch-exact", "init_layers": args.init_layers, "memory_params": None,
        "steps": steps, "stop_reason": extra.get("stop_reason"), "stages": clock.stages, "interrupted": interrupted,
        "throughput": {
            "datastore_tokens_per_s": by.get("datastore", {}).get("per_second"),
            "knn_rows_per_s": knn.get("per_second"),
            "knn_search_s": round(search.seconds, 2), "knn_search_calls": search.calls, "knn_rows_searched": search.queries,
            "knn_search_rows_per_s": round(search.queries / search.seconds, 1) if search.seconds else None,
            "knn_rest_s": round(knn.get("seconds", 0) - search.seconds, 2) if knn else None,
            "exact_search_tflops": round(2.0 * search.queries * rows * dim / search.seconds / 1e12, 1)
            if search.seconds and rows else None,
            "train_steps_per_s": round(steps / train_stage["seconds"], 3) if train_stage.get("seconds") and steps else None,
            "train_tokens_per_s": round(steps * block_tokens / train_stage["seconds"], 1)
            if train_stage.get("seconds") and steps else None,
        },
        "tf32_search": args.tf32_search, "settings": {k: v for k, v in vars(args).items() if k not in ("out_json",)},
        "memory_folder": str(res.out) if res else None, "wall_s": round(wall, 1), "validation": extra.get("validation"),
    }
    if res:
        from memreg.models import summarize_model

        summary["memory_params"] = summarize_model(res.out).parameters
    print_table(summary)
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(summary, indent=1, default=str))
        log(f"wrote {args.out_json}")
    return 0 if res else 124


class _Interrupted(Exception):
    pass


def print_table(s: dict) -> None:
    tp = s["throughput"]
    print(f"\n(a) memreg train on {s['device']} (torch {s['torch']}), teacher SmolLM2-135M [{s['smollm2']}]")
    print(f"    {_n(s['train_tokens'])} training tokens -> {_n(s['datastore_rows'])} datastore rows x {s['key_dim']} dims, "
          f"k = {s['k']}, search {s['index']}, memory = first {s['init_layers']} blocks")
    print(f"{'stage':16} {'seconds':>9} {'units':>14} {'per second':>14}")
    for st in s["stages"] + ([s["interrupted"]] if s.get("interrupted") else []):
        per = f"{st['per_second']:,.1f}" if st.get("per_second") else ""
        what = " (cached)" if st.get("cached") else ""
        if st.get("interrupted"):
            what = f" STOPPED at {_n(st['done'])} of {_n(st['total'])}; all of it would take ~{st['projected_total_s']} s"
        print(f"{str(st['stage']):16} {st['seconds']:9.1f} {st['done']:>14,} {per:>14} {st['unit']}{what}")
    print(f"kNN stage: search {tp['knn_search_s']} s in {tp['knn_search_calls']} calls "
          f"({tp['knn_search_rows_per_s']} rows/s, {tp['exact_search_tflops']} TFLOP/s of distance products), "
          f"the rest (sparse targets on the CPU, writes) {tp['knn_rest_s']} s")
    print(f"training: {s['steps']} steps ({s['stop_reason']}), {tp['train_steps_per_s']} steps/s, "
          f"{tp['train_tokens_per_s']} tokens/s; total wall {s['wall_s']:.0f} s")


def _n(x) -> str:
    return "?" if x is None else f"{x:,}"


if __name__ == "__main__":
    raise SystemExit(main())
