"""Does a memreg memory beat the alternatives on real text? One command, CPU, < 60 minutes.

    python bench/quality.py                 # writes bench/results/quality.{json,md} + PNG plots
    python bench/quality.py --fresh         # redo every stage (default: reuse runs/quality/)

Two real domains that ship with the machine, split by document (sha256 of the content) into
train / validation / held-out:
  law  = Debian licence and copyright texts (/usr/share/common-licenses, /usr/share/doc/*/copyright),
         deduplicated by content hash;
  code = the running Python's standard library sources (Lib/*.py).
Two shipped bases sharing one tokenizer (models/memreg-base-small, -large), one memory per domain
trained once (`memreg.train`, teacher = large, init = small) and attached to both bases. Rows per
domain x base (held-out perplexity): base alone; + memory (manifest weight, and weight fitted by EM
on the validation split); + kNN-LM on the same datastore (weight and temperature chosen on the
validation split); + LoRA (peft, about the memory's parameter count, same token budget); full
fine-tuning (DAPT), same budget; LoRA and DAPT both alone and interpolated with the base like the
memory (weight fitted on validation); both memories composed, on each domain and on general text.
Every weight/temperature is chosen on validation; held-out text is only scored.

Each stage caches under --work (default runs/quality/); a rerun after a fix only redoes what changed.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "models" / "memreg-base-small"
LARGE = ROOT / "models" / "memreg-base-large"
TOKENIZER = ROOT / "models" / "memreg-tokenizer"
BASES = {"small": SMALL, "large": LARGE}
DOMAINS = ("law", "code")
CONTEXT, STRIDE = 512, 256  # sliding-window evaluation, same for every row
SEED = 0
T_FACTORS = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]  # kNN-LM temperatures tried on validation, x memreg's T0


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


# ------------------------------------------------------------------------------------------ data
def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def domain_documents(domain: str) -> list[tuple[str, str]]:
    """(source, text) of every distinct document of a domain, deduplicated by content hash."""
    if domain == "law":
        files = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/copyright"))
    else:
        files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    seen, docs = set(), []
    for f in files:
        if not os.path.isfile(f):
            continue
        raw = open(f, "rb").read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        h = _hash(text)
        if h in seen or not text.strip():
            continue
        seen.add(h)
        docs.append((f, text))
    return docs


def build_splits(work: Path, args, tok) -> dict:
    """Split each domain by document; cap tokens per split; write train.jsonl + token ids per split."""
    meta_path = work / "data" / "meta.json"
    if meta_path.exists():
        return jload(meta_path)
    t0 = time.monotonic()
    eos = tok.eos_token_id
    meta: dict = {"caps": {"train_tokens": args.train_tokens, "valid_tokens": args.valid_tokens,
                           "test_tokens": args.test_tokens, "general_tokens": args.general_tokens,
                           "doc_max_tokens": args.doc_max_tokens},
                  "split_rule": "sha256(content) mod 100: <10 validation, 10-24 held-out, else train; documents "
                                "taken in hash order until the split's token cap; each document truncated to "
                                f"{args.doc_max_tokens} tokens"}
    for domain in DOMAINS:
        docs = domain_documents(domain)
        buckets: dict[str, list] = {"train": [], "valid": [], "test": []}
        for src, text in sorted(docs, key=lambda d: _hash(d[1])):
            b = int(_hash(text)[:8], 16) % 100
            buckets["valid" if b < 10 else "test" if b < 25 else "train"].append((src, text))
        out = work / "data" / domain
        out.mkdir(parents=True, exist_ok=True)
        dmeta = {"documents_total": len(docs)}
        for split, items in buckets.items():
            cap = getattr(args, f"{split}_tokens")
            chosen, ids, total = [], [], 0
            for src, text in items:
                t = tok(text, add_special_tokens=False)["input_ids"][: args.doc_max_tokens]
                if total >= cap:
                    break
                t = t[: cap - total]
                chosen.append({"source": src, "text": tok.decode(t)})
                ids.extend(t + [eos])
                total += len(t)
            dmeta[split] = {"documents": len(chosen), "documents_available": len(items), "tokens": total}
            if split == "train":
                with open(out / "train.jsonl", "w") as fh:
                    for c in chosen:
                        fh.write(json.dumps(c) + "\n")
            else:
                np.save(out / f"{split}.npy", np.asarray(ids, dtype=np.int64))
        meta[domain] = dmeta
        log(f"data {domain}: {dmeta}")
    # general text: the held-out pages of the bases' own pretraining corpus (man pages + pydoc)
    valid = ROOT / ".device" / "corpus" / "valid.txt"
    if not valid.exists():
        valid = work / "general" / "valid.txt"
        if not valid.exists():
            log("general text: rebuilding the bases' held-out pages (examples/bases/build_bases.py corpus)")
            subprocess.run([sys.executable, str(ROOT / "examples" / "bases" / "build_bases.py"), "corpus",
                            "--out", str(work / "general")], check=True)
    pages = [p for p in valid.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    ids = []
    for p in pages:
        ids.extend(tok(p, add_special_tokens=False)["input_ids"] + [eos])
        if len(ids) >= args.general_tokens:
            break
    np.save(work / "data" / "general.npy", np.asarray(ids[: args.general_tokens], dtype=np.int64))
    meta["general"] = {"source": "held-out pages of the bases' pretraining corpus (man pages + pydoc), "
                                 "examples/bases/build_bases.py corpus -> valid.txt", "tokens": len(ids[: args.general_tokens])}
    meta["wall_s"] = time.monotonic() - t0
    jsave(meta_path, meta)
    return meta


def text_ids(work: Path, name: str) -> np.ndarray:
    if name == "general":
        return np.load(work / "data" / "general.npy")
    domain, split = name.split("-")
    return np.load(work / "data" / domain / f"{split}.npy")


# ---------------------------------------------------------------------------------------- memory
class _Timer:
    """TrainProgress that records each stage's wall time."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._cur, self._t = None, 0.0

    def stage(self, name, *, total=None, unit="", cached=False):
        self._cur, self._t = name, time.monotonic()
        log(f"  memreg train: {name}{' (cached)' if cached else ''}")

    def advance(self, n=1, **info):
        pass

    def note(self, message, *, warning=False):
        log(f"  memreg train: {message}")

    def end_stage(self):
        if self._cur:
            self.times[self._cur] = time.monotonic() - self._t
        self._cur = None


def build_memory(work: Path, domain: str, args) -> dict:
    from memreg.train import TrainConfig, train

    info_path = work / f"mem-{domain}.json"
    if info_path.exists():
        return jload(info_path)
    cfg = TrainConfig(corpus=[str(work / "data" / domain / "train.jsonl")], teacher=str(LARGE), init=str(SMALL),
                      out=work / f"mem-{domain}", work_dir=work / f"mem-{domain}.work", name=f"bench-{domain}",
                      domain=[domain], epochs=args.epochs, lr=args.mem_lr, seed=SEED)
    timer = _Timer()
    t0 = time.monotonic()
    res = train(cfg, progress=timer)
    wall = time.monotonic() - t0
    from transformers import AutoModelForCausalLM

    mem = AutoModelForCausalLM.from_pretrained(str(cfg.out))
    info = {"result": res.to_json(), "wall_s": wall, "stage_wall_s": timer.times, "params": n_params(mem),
            "train_tokens": res.corpus_tokens, "epochs": args.epochs}
    jsave(info_path, info)
    return info


def corpus_tokens(work: Path, domain: str) -> np.ndarray:
    """The exact training tokens the memory saw (the pipeline's corpus stage), for LoRA / DAPT."""
    from memreg.train.corpus import TokenArray

    folder = [p for p in sorted((work / f"mem-{domain}.work").glob("corpus-*")) if (p / "meta.json").exists()][-1]
    arr = TokenArray(folder, "train")
    return np.asarray(arr.slice(0, len(arr)), dtype=np.int64)


# ------------------------------------------------------------------------------- LoRA and DAPT
def finetune(work: Path, kind: str, domain: str, base: str, args, mem_params: int) -> dict:
    """kind 'lora' (peft, ~mem_params trainable) or 'dapt' (full fine-tuning); CE, same blocks,
    same epochs, batch size and schedule shape as the memory decoder's training."""
    import torch
    from transformers import AutoModelForCausalLM

    from memreg.train.datastore import blocks
    from memreg.train.trainer import make_optimizer, schedule

    out = work / f"{kind}-{domain}-{base}"
    info_path = out / "info.json"
    if info_path.exists():
        return jload(info_path)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(str(BASES[base]), dtype=torch.float32)
    base_params = n_params(model)
    extra: dict = {}
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        targets = ["c_attn", "c_proj", "c_fc"]

        def lora_count(r: int) -> int:
            m = get_peft_model(AutoModelForCausalLM.from_pretrained(str(BASES[base]), dtype=torch.float32),
                               LoraConfig(r=r, lora_alpha=r, target_modules=targets, fan_in_fan_out=True,
                                          lora_dropout=0.0))
            return m.get_nb_trainable_parameters()[0]

        per_rank = lora_count(1)
        rank = max(1, round(mem_params / per_rank))
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=targets,
                                                 fan_in_fan_out=True, lora_dropout=0.0))
        trainable = model.get_nb_trainable_parameters()[0]
        lr = args.lora_lr
        extra = {"rank": rank, "alpha": rank, "targets": targets, "hidden": model.config.n_embd}
    else:
        trainable = base_params
        lr = args.dapt_lr
    tokens = corpus_tokens(work, domain)
    block = CONTEXT
    spans = blocks(len(tokens), block)
    bs = 8
    sched = schedule(len(spans), batch_size=bs, grad_accum=1, steps=None, epochs=args.epochs, warmup_fraction=0.05)
    opt, lr_sched = make_optimizer(model, lr=lr, weight_decay=0.0, sched=sched)
    # make_optimizer covers all parameters; frozen ones (LoRA) get no gradient and stay put
    model.train()
    micro = math.ceil(len(spans) / bs)
    seen = 0
    for step in range(sched.total_steps):
        epoch, j = divmod(step, micro)
        order = np.random.default_rng([SEED, epoch]).permutation(len(spans))
        chosen = [spans[i] for i in order[j * bs : (j + 1) * bs]]
        T = max(b - a for a, b in chosen)
        ids = torch.zeros(len(chosen), T, dtype=torch.long)
        labels = torch.full((len(chosen), T), -100, dtype=torch.long)
        for r, (a, b) in enumerate(chosen):
            ids[r, : b - a] = torch.from_numpy(tokens[a:b])
            labels[r, : b - a] = torch.from_numpy(tokens[a + 1 : b + 1])
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        seen += int((labels != -100).sum())
        if step % 20 == 0 or step == sched.total_steps - 1:
            log(f"  {kind} {domain} {base}: step {step + 1}/{sched.total_steps} loss {loss.item():.3f}")
    if kind == "lora":
        model = model.merge_and_unload()
    model.save_pretrained(out / "model", safe_serialization=True)
    wall = time.monotonic() - t0
    # FLOPs: full FT 6*P*tokens; LoRA: forward 2*P + backward through activations 2*P + LoRA weight grads
    flops = (6 * base_params if kind == "dapt" else 4 * base_params + 6 * trainable) * seen
    info = {"kind": kind, "domain": domain, "base": base, "trainable_params": int(trainable),
            "base_params": base_params, "lr": lr, "steps": sched.total_steps, "batch_size": bs, "block": block,
            "epochs": args.epochs, "tokens_seen": seen, "train_tokens": int(len(tokens)), "wall_s": wall,
            "flops": float(flops), **extra}
    jsave(info_path, info)
    return info


# ------------------------------------------------------------------------------------- scoring
def score(work: Path, model_name: str, model_path: Path, text: str) -> np.ndarray:
    """Per-token log p of `text` under a model, cached."""
    import torch
    from transformers import AutoModelForCausalLM

    from memreg.evaluate import target_log_probs

    path = work / "logprobs" / f"{model_name}__{text}.npy"
    if path.exists():
        return np.load(path)
    t0 = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    lp = target_log_probs(model, text_ids(work, text), context=CONTEXT, stride=STRIDE, vocab_size=8192, batch_size=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, lp)
    log(f"  scored {model_name} on {text}: ppl {math.exp(-lp.mean()):.2f} ({time.monotonic() - t0:.0f} s)")
    return lp


def knn_log_probs(work: Path, domain: str, text: str, t_factors) -> dict:
    """kNN-LM log p_kNN(x_t) on `text` for each temperature T0 * factor (T0: memreg train's choice),
    with the same sliding windows as the LM scores. One search, many temperatures."""
    import torch

    from memreg.knnlm import KNNLM
    from memreg.evaluate import sliding_windows
    from memreg.train.datastore import last_ffn_inputs

    path = work / "logprobs" / f"knn-{domain}__{text}.npz"
    if path.exists():
        z = np.load(path)
        return {"temperatures": z["temperatures"].tolist(), "lp": z["lp"], "search_s": float(z["search_s"])}
    t0 = time.monotonic()
    knn = KNNLM.from_work_dir(work / f"mem-{domain}.work")
    ids = torch.as_tensor(text_ids(work, text))
    n = len(ids)
    queries = np.empty((n - 1, knn.key_model.config.n_embd), dtype=np.float32)
    with torch.no_grad():  # the same windows the LM scores use
        for start, end, first in sliding_windows(n, context=CONTEXT, stride=STRIDE):
            h = last_ffn_inputs(knn.key_model, ids[start:end][None])[0]
            queries[first - 1 : end - 1] = h[first - start - 1 : end - start - 1].float().numpy()
    targets = ids[1:].numpy()
    temps = [knn.temperature * f for f in t_factors]
    lp = np.empty((len(temps), n - 1), dtype=np.float64)
    for a in range(0, n - 1, 2048):
        d, nid = knn.index.search(np.ascontiguousarray(queries[a : a + 2048]), knn.k)
        ok = nid >= 0
        match = ok & (knn.values[np.where(ok, nid, 0)] == targets[a : a + 2048, None])
        d = d.astype(np.float64)
        for i, t in enumerate(temps):
            z = np.where(ok, -d / t, -np.inf)
            top = z.max(axis=1, keepdims=True)
            e = np.exp(z - top)
            with np.errstate(divide="ignore"):
                lp[i, a : a + 2048] = np.log((e * match).sum(1)) - np.log(e.sum(1))
    wall = time.monotonic() - t0
    np.savez(path, temperatures=np.asarray(temps), lp=lp, search_s=wall)
    log(f"  kNN-LM {domain} on {text}: {n - 1} queries, k={knn.k}, {wall:.0f} s")
    return {"temperatures": temps, "lp": lp, "search_s": wall}


def ppl(lp: np.ndarray) -> float:
    return float(math.exp(-float(np.mean(lp))))


def mix(base_lp, others, weights) -> np.ndarray:
    from memreg.evaluate import mixture_log_probs

    return mixture_log_probs(base_lp, others, weights)


def em(base_lp, others) -> list[float]:
    from memreg.fit import em_weights

    return em_weights([base_lp, *others]).weights


# ---------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "quality"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--fresh", action="store_true", help="delete the work folder first")
    ap.add_argument("--train-tokens", type=int, default=20_000, help="cap on each domain's training tokens")
    ap.add_argument("--valid-tokens", type=int, default=8_000)
    ap.add_argument("--test-tokens", type=int, default=12_000)
    ap.add_argument("--general-tokens", type=int, default=12_000)
    ap.add_argument("--doc-max-tokens", type=int, default=4096, help="each document truncated to this many tokens")
    ap.add_argument("--epochs", type=float, default=2.0, help="passes over the training text (every trained row)")
    ap.add_argument("--mem-lr", type=float, default=1e-3)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--dapt-lr", type=float, default=3e-4)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    t_start = time.monotonic()
    work, out = Path(args.work), Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k not in ("work", "out", "fresh")}
    if args.fresh and work.exists():
        shutil.rmtree(work)  # also drops first_run_wall.json: this run's time becomes the full-run time
    work.mkdir(parents=True, exist_ok=True)
    if (work / "settings.json").exists() and jload(work / "settings.json") != settings:
        log(f"settings changed since the cached run in {work}: starting over")
        shutil.rmtree(work)
        work.mkdir(parents=True)
    jsave(work / "settings.json", settings)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))

    log("1/5 data splits")
    data = build_splits(work, args, tok)

    log("2/5 memory decoders (memreg.train, teacher=large, init=small)")
    mems = {d: build_memory(work, d, args) for d in DOMAINS}
    mem_params = mems["law"]["params"]

    log("3/5 LoRA and DAPT (same tokens, same epochs)")
    fts = {(kind, d, b): finetune(work, kind, d, b, args, mem_params)
           for d in DOMAINS for b in BASES for kind in ("lora", "dapt")}

    log("4/5 scoring")
    texts = [f"{d}-{s}" for d in DOMAINS for s in ("valid", "test")] + ["general"]
    lp: dict[tuple[str, str], np.ndarray] = {}
    paths = {**{f"base-{b}": p for b, p in BASES.items()}, **{f"mem-{d}": work / f"mem-{d}" for d in DOMAINS}}
    for name, p in paths.items():
        for t in texts:
            lp[name, t] = score(work, name, p, t)
    for (kind, d, b) in fts:
        name = f"{kind}-{d}-{b}"
        for t in (f"{d}-valid", f"{d}-test", "general"):
            lp[name, t] = score(work, name, work / name / "model", t)
    knn = {(d, s): knn_log_probs(work, d, f"{d}-{s}", T_FACTORS) for d in DOMAINS for s in ("valid", "test")}

    log("5/5 results")
    grid = [i / 20 for i in range(21)]
    results: dict = {"command": "python bench/quality.py", "settings": settings, "data": data,
                     "eval": {"context": CONTEXT, "stride": STRIDE}, "memories": {}, "rows": [], "composed": [],
                     "sweeps": {}, "finetunes": {f"{k}-{d}-{b}": v for (k, d, b), v in fts.items()}}
    base_params = {}
    from transformers import AutoConfig  # noqa: F401

    for b, p in BASES.items():
        base_params[b] = jload(p / "training.json")["params"]
    large_params = base_params["large"]
    for d in DOMAINS:
        m = mems[d]
        st = m["stage_wall_s"]
        ntok = m["train_tokens"]
        ds_flops = 2 * large_params * ntok
        m["flops"] = {"datastore": ds_flops, "train": 6 * m["params"] * ntok * m["epochs"],
                      "total": ds_flops + 6 * m["params"] * ntok * m["epochs"]}
        results["memories"][d] = m
        knn_build_s = sum(st.get(s, 0.0) for s in ("tokenize", "datastore", "index"))
        mem_build_s = sum(st.get(s, 0.0) for s in ("tokenize", "datastore", "index", "knn targets", "train"))
        manifest_w = m["result"]["recommended_weight"]
        for b in BASES:
            bv, bt = lp[f"base-{b}", f"{d}-valid"], lp[f"base-{b}", f"{d}-test"]
            mv, mt = lp[f"mem-{d}", f"{d}-valid"], lp[f"mem-{d}", f"{d}-test"]
            rows = []

            def row(method, test_ppl, *, weight=None, valid_ppl=None, wall=0.0, flops=0.0, note=""):
                r = {"domain": d, "base": b, "method": method, "test_ppl": test_ppl, "valid_ppl": valid_ppl,
                     "weight": weight, "build_wall_s": wall, "build_flops": flops, "note": note}
                rows.append(r)
                return r

            row("base alone", ppl(bt), valid_ppl=ppl(bv), note="pretrained on general text; cost not counted")
            row("+ memory, manifest weight", ppl(mix(bt, [mt], [manifest_w])), weight=manifest_w,
                valid_ppl=ppl(mix(bv, [mv], [manifest_w])), wall=mem_build_s, flops=m["flops"]["total"],
                note="weight chosen by memreg train on its own split of the training documents")
            w = em(bv, [mv])[0]
            row("+ memory, fitted weight", ppl(mix(bt, [mt], [w])), weight=w, valid_ppl=ppl(mix(bv, [mv], [w])),
                wall=mem_build_s, flops=m["flops"]["total"], note="EM on validation")
            row("memory alone", ppl(mt), valid_ppl=ppl(mv), wall=mem_build_s, flops=m["flops"]["total"])
            # kNN-LM: (T, w) by validation perplexity
            kv, kt = knn[d, "valid"], knn[d, "test"]
            best = None
            for i, temp in enumerate(kv["temperatures"]):
                wk = em(bv, [kv["lp"][i]])[0]
                v = ppl(mix(bv, [kv["lp"][i]], [wk]))
                if best is None or v < best[0]:
                    best = (v, i, wk, temp)
            v, i, wk, temp = best
            row("+ kNN-LM (same datastore)", ppl(mix(bt, [kt["lp"][i]], [wk])), weight=wk, valid_ppl=v,
                wall=knn_build_s, flops=ds_flops,
                note=f"T={temp:.4g} (memreg train's T0 x {T_FACTORS[i]:g}), "
                     f"k={m['result']['k']}, {m['result']['index']}; search {kt['search_s']:.0f} s for the held-out split")
            knn_choice = {"temperature": temp, "weight": wk}
            sweeps = {"memory": {f"{x:g}": ppl(mix(bt, [mt], [x])) for x in grid},
                      "kNN-LM": {f"{x:g}": ppl(mix(bt, [kt["lp"][i]], [x])) for x in grid}}
            for kind, label in (("lora", "LoRA"), ("dapt", "DAPT (full fine-tune)")):
                f = fts[kind, d, b]
                fv, ft = lp[f"{kind}-{d}-{b}", f"{d}-valid"], lp[f"{kind}-{d}-{b}", f"{d}-test"]
                extra = f"rank {f['rank']} on c_attn/c_proj/c_fc, {f['trainable_params']:,} trainable params" \
                    if kind == "lora" else f"{f['trainable_params']:,} params, lr {f['lr']:g}"
                row(f"{label} alone", ppl(ft), valid_ppl=ppl(fv), wall=f["wall_s"], flops=f["flops"], note=extra)
                wf = em(bv, [fv])[0]
                row(f"base + {label}, fitted weight", ppl(mix(bt, [ft], [wf])), weight=wf,
                    valid_ppl=ppl(mix(bv, [fv], [wf])), wall=f["wall_s"], flops=f["flops"],
                    note="interpolated like the memory; EM on validation")
                sweeps[label] = {f"{x:g}": ppl(mix(bt, [ft], [x])) for x in grid}
            results["sweeps"][f"{d}/{b}"] = {"curves": sweeps, "memory_fitted": w, "memory_manifest": manifest_w,
                                              "knn": knn_choice}
            results["rows"].extend(rows)

    # both memories composed: on each domain's held-out text and on general text (forgetting)
    for b in BASES:
        bv = np.concatenate([lp[f"base-{b}", f"{d}-valid"] for d in DOMAINS])
        mvs = [np.concatenate([lp[f"mem-{m}", f"{d}-valid"] for d in DOMAINS]) for m in DOMAINS]
        fitted = em(bv, mvs)
        man = [mems[d]["result"]["recommended_weight"] for d in DOMAINS]
        if sum(man) > 1:
            man = [x / sum(man) for x in man]
        for label, ws in (("manifest weights (scaled to sum <= 1)", man), ("EM on both validation splits", fitted)):
            entry = {"base": b, "weights": dict(zip(DOMAINS, ws)), "how": label}
            for t in ("law-test", "code-test", "general"):
                entry[t] = {"base": ppl(lp[f"base-{b}", t]),
                            "composed": ppl(mix(lp[f"base-{b}", t], [lp[f"mem-{m}", t] for m in DOMAINS], ws))}
            results["composed"].append(entry)
        # forgetting of the fine-tuned models on general text
        for d in DOMAINS:
            for kind in ("lora", "dapt"):
                name = f"{kind}-{d}-{b}"
                wf = em(lp[f"base-{b}", f"{d}-valid"], [lp[name, f"{d}-valid"]])[0]
                results.setdefault("general_text", []).append({
                    "base": b, "model": name, "base_ppl": ppl(lp[f"base-{b}", "general"]),
                    "alone_ppl": ppl(lp[name, "general"]), "interpolated_weight": wf,
                    "interpolated_ppl": ppl(mix(lp[f"base-{b}", "general"], [lp[name, "general"]], [wf]))})
            wm = em(lp[f"base-{b}", f"{d}-valid"], [lp[f"mem-{d}", f"{d}-valid"]])[0]
            results["general_text"].append({
                "base": b, "model": f"mem-{d}", "base_ppl": ppl(lp[f"base-{b}", "general"]),
                "alone_ppl": ppl(lp[f"mem-{d}", "general"]), "interpolated_weight": wm,
                "interpolated_ppl": ppl(mix(lp[f"base-{b}", "general"], [lp[f"mem-{d}", "general"]], [wm]))})

    results["compose_check"] = compose_check(work, mems)
    results["total_wall_s"] = time.monotonic() - t_start
    first = work / "first_run_wall.json"  # wall time of the run that built every stage (not a cached rerun)
    if not first.exists():
        jsave(first, {"wall_s": results["total_wall_s"]})
    results["full_run_wall_s"] = jload(first)["wall_s"]
    results["python"] = sys.version.split()[0]
    results["torch_threads"] = torch.get_num_threads()
    plots = make_plots(results, out)
    results["plots"] = plots
    md = render_markdown(results)
    jsave(out / "quality.json", results)
    (out / "quality.md").write_text(md)
    print(md)
    log(f"done in {results['total_wall_s']:.0f} s (this invocation; cached stages are not re-timed)")
    return 0


def compose_check(work: Path, mems) -> dict:
    """The per-token mixture above equals memreg.compose's ComposedLM on a slice (same weights)."""
    import torch

    import memreg
    from memreg.evaluate import target_log_probs

    ids = text_ids(work, "law-test")[:600]
    ws = [0.3, 0.2]
    composed = memreg.compose(str(LARGE), [str(work / f"mem-{d}") for d in DOMAINS], ws, dtype=torch.float32)
    got = target_log_probs(composed, ids, context=CONTEXT, stride=STRIDE, vocab_size=8192)
    from transformers import AutoModelForCausalLM

    def one(p):
        return target_log_probs(AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval(), ids,
                                context=CONTEXT, stride=STRIDE, vocab_size=8192)

    ref = mix(one(LARGE), [one(work / f"mem-{d}") for d in DOMAINS], ws)
    return {"tokens": len(ids) - 1, "weights": ws, "max_abs_diff": float(np.max(np.abs(got - ref)))}


# ------------------------------------------------------------------------------------- output
def make_plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for key, sw in results["sweeps"].items():
        d, b = key.split("/")
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, curve in sw["curves"].items():
            xs = [float(x) for x in curve]
            ax.plot(xs, list(curve.values()), marker="o", ms=3, label=f"base + {label}")
        ax.axvline(sw["memory_fitted"], color="C0", ls="--", lw=0.8, label=f"memory EM weight {sw['memory_fitted']:.2f}")
        if sw["memory_manifest"] is not None:
            ax.axvline(sw["memory_manifest"], color="C0", ls=":", lw=0.8, label=f"manifest weight {sw['memory_manifest']:.2f}")
        ax.set_yscale("log")
        ax.set_xlabel("weight of the second model (base gets 1 - w)")
        ax.set_ylabel("held-out perplexity")
        ax.set_title(f"{d}: base-{b} + w * other (held-out)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"quality_sweep_{d}_{b}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def _fmt_flops(x: float) -> str:
    return "0" if not x else f"{x:.2g}"


def render_markdown(r: dict) -> str:
    s = r["settings"]
    L = ["# memreg quality benchmark", "",
         f"Command: `{r['command']}` (CPU, {r['torch_threads']} torch threads). Caps: train "
         f"{s['train_tokens']:,} tokens per domain, validation {s['valid_tokens']:,}, held-out {s['test_tokens']:,}, "
         f"general text {s['general_tokens']:,}; documents truncated to {s['doc_max_tokens']} tokens; "
         f"{s['epochs']:g} epochs for every trained row (memory lr {s['mem_lr']:g}, LoRA lr {s['lora_lr']:g}, "
         f"DAPT lr {s['dapt_lr']:g}, batch 8 x 512, AdamW, 5 % warm-up + linear decay). "
         f"Perplexity by sliding window (context {r['eval']['context']}, stride {r['eval']['stride']}). "
         "All weights and temperatures chosen on the validation split; held-out text is only scored.", ""]
    for d in DOMAINS:
        dm = r["data"][d]
        L.append(f"- **{d}**: {dm['documents_total']} distinct documents; train {dm['train']['tokens']:,} tokens "
                 f"({dm['train']['documents']} docs), validation {dm['valid']['tokens']:,} ({dm['valid']['documents']}), "
                 f"held-out {dm['test']['tokens']:,} ({dm['test']['documents']}).")
    m0 = r["memories"]["law"]
    L += [f"- memory decoders: init = base-small ({m0['params']:,} params), teacher = base-large; "
          f"k = {m0['result']['k']}, index {m0['result']['index']}, kNN temperature {m0['result']['temperature']:g} "
          f"(law) / {r['memories']['code']['result']['temperature']:g} (code).", ""]
    L += ["## Held-out perplexity per domain x base", "",
          "| domain | base | method | held-out ppl | weight | valid ppl | build wall s | build FLOPs | note |",
          "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for x in r["rows"]:
        w = "" if x["weight"] is None else f"{x['weight']:.2f}"
        v = "" if x["valid_ppl"] is None else f"{x['valid_ppl']:.2f}"
        L.append(f"| {x['domain']} | {x['base']} | {x['method']} | {x['test_ppl']:.2f} | {w} | {v} | "
                 f"{x['build_wall_s']:.0f} | {_fmt_flops(x['build_flops'])} | {x['note']} |")
    L += ["", "Build cost: memory = tokenize + datastore + index + kNN targets + training (wall time of memreg "
          "train's stages; FLOPs 2·P_large·N for the datastore + 6·P_mem·N·epochs); kNN-LM = tokenize + datastore + "
          "index (2·P_large·N); LoRA ≈ (4·P_base + 6·P_lora)·tokens; DAPT = 6·P_base·tokens. One memory serves both "
          "bases; LoRA and DAPT are trained per base. Pretraining of the bases is not counted.", ""]
    L += ["## Both memories composed (law + code) with one base", "",
          "| base | weights | law held-out: base → composed | code held-out: base → composed | general text: base → composed |",
          "|---|---|---|---|---|"]
    for c in r["composed"]:
        ws = ", ".join(f"{k} {v:.2f}" for k, v in c["weights"].items())
        cells = " | ".join(f"{c[t]['base']:.2f} → {c[t]['composed']:.2f}" for t in ("law-test", "code-test", "general"))
        L.append(f"| {c['base']} | {ws} ({c['how']}) | {cells} |")
    L += ["", "## Forgetting: general-text perplexity (held-out man/pydoc pages)", "",
          "| base | model | base alone | model alone | base + model at its domain-fitted weight (w) |",
          "|---|---|---:|---:|---:|"]
    for g in r["general_text"]:
        L.append(f"| {g['base']} | {g['model']} | {g['base_ppl']:.2f} | {g['alone_ppl']:.2f} | "
                 f"{g['interpolated_ppl']:.2f} (w={g['interpolated_weight']:.2f}) |")
    cc = r["compose_check"]
    L += ["", f"Check: `memreg.compose(base-large, [law, code], {cc['weights']})` matches the per-token mixture "
          f"used above on {cc['tokens']} tokens (max |Δ log p| = {cc['max_abs_diff']:.1e}).", "",
          "Plots: " + ", ".join(f"`{p}`" for p in r["plots"]), "", "## Interpretation (generated from the numbers)", ""]
    L += interpret(r)
    L += ["", f"Wall time of the full run that built every stage: {r['full_run_wall_s'] / 60:.1f} min; of this invocation: "
          f"{r['total_wall_s'] / 60:.1f} min (cached stages are reused, not re-timed)."]
    return "\n".join(L) + "\n"


def interpret(r: dict) -> list[str]:
    by = {}
    for x in r["rows"]:
        by[x["domain"], x["base"], x["method"]] = x["test_ppl"]
    out = []
    cells = [(d, b) for d in DOMAINS for b in BASES]
    mem = {c: by[c[0], c[1], "+ memory, fitted weight"] for c in cells}
    comps = {"kNN-LM": "+ kNN-LM (same datastore)", "LoRA (interpolated)": "base + LoRA, fitted weight",
             "DAPT (interpolated)": "base + DAPT (full fine-tune), fitted weight", "DAPT alone": "DAPT (full fine-tune) alone"}
    gains = [1 - mem[c] / by[c[0], c[1], "base alone"] for c in cells]
    out.append(f"The memory decoder (EM weight) lowers held-out perplexity by {min(gains):.0%}–{max(gains):.0%} "
               f"against the base alone in all {len(cells)} domain × base cells." if min(gains) > 0 else
               f"The memory decoder changes held-out perplexity by {-max(gains):+.0%} to {-min(gains):+.0%} against the base alone.")
    parts = []
    for name, key in comps.items():
        wins = [c for c in cells if mem[c] < by[c[0], c[1], key]]
        losses = [f"{d}/{b} ({mem[(d, b)]:.1f} vs {by[d, b, key]:.1f})" for d, b in cells if (d, b) not in wins]
        parts.append(f"it beats {name} in {len(wins)}/{len(cells)} cells" +
                     (f", loses in {', '.join(losses)}" if losses else ""))
    out.append("Against the baselines, " + "; ".join(parts) + ".")
    comp = {c["base"]: c for c in r["composed"] if c["how"].startswith("EM")}
    bits = []
    for b in BASES:
        gen = {g["model"]: g for g in r["general_text"] if g["base"] == b}
        dapt = [gen[f"dapt-{d}-{b}"] for d in DOMAINS]
        bits.append(f"base-{b} {comp[b]['general']['base']:.1f} → {comp[b]['general']['composed']:.1f} with both memories "
                    f"(DAPT models alone: " + ", ".join(f"{g['alone_ppl']:.1f}" for g in dapt)
                    + "; interpolated at their domain weights: " + ", ".join(f"{g['interpolated_ppl']:.1f}" for g in dapt) + ")")
    out.append("General text (forgetting), law/code order: " + "; ".join(bits) + ". A mixture that gives the base weight 1 - w "
               "is at most 1/(1 - w) times the base's perplexity, whatever the other model does.")
    mm = r["memories"]
    tot = sum(m["wall_s"] for m in mm.values())
    dapt = sum(f["wall_s"] for k, f in r["finetunes"].items() if k.startswith("dapt"))
    out.append(f"Cost: the two memories took {tot:.0f} s to build and serve both bases; the four DAPT runs took {dapt:.0f} s "
               "and each serves one base. Caveat: small CPU-scale models and corpora, one seed, fixed hyper-parameters.")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
