"""Cost of attaching a memory decoder, measured in one run (ratios only; the machine is shared).

    /work/venv/bin/python bench/attach_overhead.py [--pair gpt2] [--base-layers 4] [--mem-layers 2]
        [--tokens 8192] [--context 1024] [--stride 1024] [--new-tokens 64] [--repeats 2]
        [--knn-keys 1000000] [--knn-k 1024] [--knn-factory IVF256,Flat] [--threads 2] [--work-dir /tmp/memreg-bench-attach]

Model pair (random weights, saved and loaded as package folders through `memreg.compose`,
tokenizer models/memreg-tokenizer, 8192 tokens):
  gpt2: base shaped like GPT-2-medium (n_embd 1024, 16 heads; 24 layers scaled down to
        --base-layers), memory shaped like GPT-2-small (n_embd 768, 12 heads, --mem-layers), so the
        memory has ~1/3 of the base's parameters as in the paper's GPT-2 pairs.
  qwen: base shaped like Qwen2.5-0.5B (hidden 896, 14 heads / 2 KV heads, MLP 4864; 24 layers scaled
        down to --base-layers), memory the same width with --mem-layers layers.

1. scoring: `memreg.evaluate.target_log_probs` (sliding window) over --tokens tokens of real text,
   base alone vs ComposedLM(base, memory, w=0.3); ratio next to the floor 1 + FLOPs(mem)/FLOPs(base).
2. greedy decoding (batch 1): ComposedLM.generate vs the same loop with no memory
   (compose(base, [])) and vs transformers' base.generate; tokens/s and ratios.
3. kNN-LM (`memreg.knnlm.KNNLM`) on the same base: >= 1 M keys of the base's width (random keys with
   the mean/std of the base's real last_ffn_input), faiss index built by the pipeline's own
   `build_index` (trained on a sample, filled in chunks; nprobe from `set_nprobe`) with
   --knn-factory (default IVF256,Flat; `auto` = the pipeline's choice, IVF4096,PQ64 here, whose PQ and
   k-means does not fit the time budget on 2 cores), k = --knn-k; scoring
   base + kNN-LM against base + memory decoder, with a breakdown (key forward / search / rest).
4. peak resident memory (VmHWM of a fresh child process each): base alone, base + memory, base +
   kNN-LM, against the bytes of the memory's weights.
5. `--drafting`: decoding with the memory drafting and with prompt lookup, on trained memories
   (bench/drafting.py; writes bench/results/drafting.json instead).
Repetitions are interleaved (A B, B A, ...); medians are reported.
Writes bench/results/attach_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "models" / "memreg-tokenizer"
TEXT_DIR = Path("/usr/share/common-licenses")


# ----------------------------------------------------------------------------------- models
def configs(pair: str, base_layers: int, mem_layers: int, vocab: int):
    if pair == "gpt2":
        from transformers import GPT2Config

        common = dict(vocab_size=vocab, n_positions=1024, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        return (GPT2Config(n_embd=1024, n_head=16, n_layer=base_layers, **common),
                GPT2Config(n_embd=768, n_head=12, n_layer=mem_layers, **common))
    if pair == "qwen":
        from transformers import Qwen2Config

        common = dict(vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                      num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
        return Qwen2Config(num_hidden_layers=base_layers, **common), Qwen2Config(num_hidden_layers=mem_layers, **common)
    raise SystemExit(f"unknown --pair {pair!r}: gpt2 or qwen")


def build_models(args, work: Path) -> tuple[Path, Path]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tag = f"{args.pair}-b{args.base_layers}-m{args.mem_layers}"
    out = []
    for role, cfg, seed in zip(("base", "memory"), configs(args.pair, args.base_layers, args.mem_layers, len(tok)), (0, 1)):
        folder = work / f"{tag}-{role}"
        if not (folder / "model.safetensors").exists():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(cfg)
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
        out.append(folder)
    return out[0], out[1]


def param_count(model, *, with_input_embeddings: bool = True) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def flops_per_token(model, ctx: float) -> float:
    """Forward FLOPs per token: 2 x every matmul weight (the LM head included, input/position
    embedding lookups excluded) + 4 x layers x attention width x attended positions."""
    import torch

    matmul = 0
    emb = model.get_input_embeddings().weight
    for name, p in model.named_parameters():
        if p.ndim == 2 and p is not emb and "wpe" not in name:
            matmul += p.numel()
    out = model.get_output_embeddings().weight
    matmul += out.numel()  # tied with the input embeddings: counted once more, as the LM head
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    width = getattr(cfg, "hidden_size", None) or cfg.n_embd
    del torch
    return 2.0 * matmul + 4.0 * layers * width * ctx


def real_ids(tok, n: int):
    import numpy as np

    ids: list[int] = []
    for p in sorted(TEXT_DIR.iterdir()):
        if p.is_file():
            ids += tok(p.read_text(errors="replace"), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(ids) >= n:
            break
    while len(ids) < n:
        ids = ids + ids
    return np.asarray(ids[:n], dtype=np.int64)


def scoring_ctx(n: int, context: int, stride: int) -> tuple[float, int]:
    """(mean attended positions per forwarded token, forwarded tokens) of the sliding windows."""
    starts, s = [], 0
    while True:
        starts.append(s)
        if s + context >= n:
            break
        s += stride
    lens = [min(context, n - a) for a in starts]
    fwd = sum(lens)
    mean_ctx = sum(L * (L + 1) / 2 for L in lens) / fwd
    return mean_ctx, fwd


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def med(xs):
    return statistics.median(xs)


# ----------------------------------------------------------------------------------- kNN-LM
def build_knn(args, base, ids, work: Path):
    """A datastore of --knn-keys random keys shaped like the base's last_ffn_input, indexed as the
    training pipeline would index it. Cached under the work folder."""
    import numpy as np
    import torch

    from memreg.train.datastore import last_ffn_inputs
    from memreg.train.index import build_index, choose_factory

    dim = base.config.hidden_size if hasattr(base.config, "hidden_size") else base.config.n_embd
    n = args.knn_keys
    auto = choose_factory(n, dim, memory_budget_mb=args.memory_budget_mb, flat_max_keys=50_000)
    factory = auto if args.knn_factory == "auto" else args.knn_factory
    tag = f"{args.pair}-b{args.base_layers}-n{n}-{factory.replace(',', '_')}"
    folder = work / f"knn-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.faiss"
    info = {"keys": n, "dim": dim, "factory": factory, "pipeline_auto_factory": auto}
    if not index_path.exists():
        with torch.no_grad():
            h = torch.cat([last_ffn_inputs(base, torch.as_tensor(ids[a:a + 1024])[None])[0]
                           for a in range(0, min(len(ids), 4096), 1024)]).float().numpy()
        mean, std = h.mean(0), h.std(0) + 1e-3
        rng = np.random.default_rng(0)
        keys = np.lib.format.open_memmap(folder / "keys.npy", mode="w+", dtype=np.float16, shape=(n, dim))
        for a in range(0, n, 65536):
            b = min(n, a + 65536)
            keys[a:b] = (mean + std * rng.standard_normal((b - a, dim), dtype=np.float32)).astype(np.float16)
        keys.flush()
        np.save(folder / "values.npy", rng.integers(0, args.vocab, size=n, dtype=np.int32))
        t, _ = timed(lambda: build_index(np.load(folder / "keys.npy", mmap_mode="r"), factory, index_path, seed=0))
        (folder / "build.json").write_text(json.dumps({"index_build_s": t}))
        (folder / "keys.npy").unlink()  # the index holds what search needs; keep /tmp small
    info.update(json.loads((folder / "build.json").read_text()))
    return folder, info


def load_knn(args, base, folder: Path):
    import numpy as np

    from memreg.knnlm import KNNLM
    from memreg.train.index import load_index, set_nprobe

    index = load_index(folder / "index.faiss")
    nprobe = set_nprobe(index, None, k=args.knn_k)
    values = np.load(folder / "values.npy")
    knn = KNNLM(key_model=base, index=index, values=values, k=args.knn_k, temperature=1.0, vocab_size=args.vocab)
    return knn, nprobe


class TimedIndex:
    """Proxy for a faiss index that adds up the time spent in search()."""

    def __init__(self, index):
        self.index, self.seconds = index, 0.0

    def search(self, q, k):
        t = time.perf_counter()
        out = self.index.search(q, k)
        self.seconds += time.perf_counter() - t
        return out


class TimedKeyModel:
    """Wraps memreg.knnlm's key forward (last_ffn_inputs) to time it."""

    def __init__(self):
        import memreg.train.datastore as ds

        self.ds, self.orig, self.seconds = ds, ds.last_ffn_inputs, 0.0

        def wrapped(*a, **kw):
            t = time.perf_counter()
            out = self.orig(*a, **kw)
            self.seconds += time.perf_counter() - t
            return out

        ds.last_ffn_inputs = wrapped

    def restore(self):
        self.ds.last_ffn_inputs = self.orig


# ----------------------------------------------------------------------------------- children (RSS)
def rss_now_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    res: dict = {"mode": args.child, "rss_start_kb": rss_now_kb()}
    if args.child == "imports":
        import transformers  # noqa: F401

        import memreg.compose  # noqa: F401
    else:
        from transformers import AutoTokenizer

        from memreg.compose import compose
        from memreg.evaluate import target_log_probs

        work = Path(args.work_dir)
        base_dir, mem_dir = build_models(args, work)
        tok = AutoTokenizer.from_pretrained(TOKENIZER)
        ids = real_ids(tok, args.rss_tokens)
        if args.child == "composed":
            model = compose(base_dir, [mem_dir], weights=[args.weight])
        else:
            model = compose(base_dir, [], tokenizer=tok).base
        res["rss_loaded_kb"] = rss_now_kb()
        if args.child == "knn":
            knn, _ = load_knn(args, model, Path(args.knn_folder))
            res["rss_loaded_kb"] = rss_now_kb()
            target_log_probs(model, ids, context=args.context, stride=args.stride, vocab_size=len(tok))
            knn.target_log_probs(ids, context=args.context, stride=args.stride)
        else:
            target_log_probs(model, ids, context=args.context, stride=args.stride, vocab_size=len(tok))
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork + exec)
    res["maxrss_kb"] = rss_now_kb("VmHWM")
    print("RESULT " + json.dumps(res))


def run_child(args, mode: str, **extra) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--pair", args.pair, "--base-layers", str(args.base_layers),
           "--mem-layers", str(args.mem_layers), "--context", str(args.context), "--stride", str(args.stride),
           "--threads", str(args.threads), "--work-dir", args.work_dir, "--rss-tokens", str(args.rss_tokens),
           "--knn-k", str(args.knn_k), "--knn-factory", args.knn_factory]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


# ----------------------------------------------------------------------------------- main
def main() -> None:
    if "--drafting" in sys.argv:  # 5. decoding with drafts: bench/drafting.py (trained memories, not random pairs)
        from drafting import main as drafting_main

        drafting_main([a for a in sys.argv[1:] if a != "--drafting"])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="gpt2", choices=["gpt2", "qwen"])
    ap.add_argument("--base-layers", type=int, default=4)
    ap.add_argument("--mem-layers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=8192, help="scored tokens of real text")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=1024)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--decode-repeats", type=int, default=3)
    ap.add_argument("--weight", type=float, default=0.3)
    ap.add_argument("--knn-keys", type=int, default=1_000_000)
    ap.add_argument("--knn-k", type=int, default=1024)
    ap.add_argument("--knn-repeats", type=int, default=1)
    ap.add_argument("--knn-factory", default="IVF256,Flat",
                    help="faiss factory string, or 'auto' for the pipeline's choice (IVF4096,PQ64 at 1 M x 1024: "
                         "its k-means alone takes many minutes on 2 cores)")
    ap.add_argument("--memory-budget-mb", type=int, default=4096, help="as `memreg train`: exact/IVF-Flat below, IVF-PQ above")
    ap.add_argument("--rss-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work-dir", default="/tmp/memreg-bench-attach")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "attach_overhead.json"))
    ap.add_argument("--skip-knn", action="store_true")
    ap.add_argument("--profile", action="store_true", help="torch profiler table of one composed scoring pass")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--knn-folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.vocab = 8192
    if args.child:
        return child(args)

    import faiss
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from memreg.compose import compose
    from memreg.evaluate import mixture_log_probs, target_log_probs

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    base_dir, mem_dir = build_models(args, work)
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    args.vocab = V = len(tok)
    composed = compose(base_dir, [mem_dir], weights=[args.weight])  # folders: tokenizers checked, safetensors
    base = composed.base
    memory = composed.members[1]
    plain = compose(base, [], tokenizer=tok)  # the same loop, no memory
    ids = real_ids(tok, args.tokens)

    p_base, p_mem = param_count(base), param_count(memory)
    mean_ctx, fwd_tokens = scoring_ctx(len(ids), args.context, args.stride)
    dec_ctx = args.prompt + args.new_tokens / 2
    floor_score = 1 + flops_per_token(memory, mean_ctx) / flops_per_token(base, mean_ctx)
    floor_decode = 1 + flops_per_token(memory, dec_ctx) / flops_per_token(base, dec_ctx)
    shapes = {
        "pair": args.pair,
        "base": {k: v for k, v in base.config.to_dict().items() if k in (
            "model_type", "n_embd", "n_head", "n_layer", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "num_hidden_layers", "vocab_size")} | {"params": p_base},
        "memory": {k: v for k, v in memory.config.to_dict().items() if k in (
            "model_type", "n_embd", "n_head", "n_layer", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "num_hidden_layers", "vocab_size")} | {"params": p_mem},
        "memory_to_base_params": p_mem / p_base,
        "dtype": "float32",
    }
    print(f"base {p_base / 1e6:.1f} M params, memory {p_mem / 1e6:.1f} M ({p_mem / p_base:.2f} of the base); "
          f"floor scoring {floor_score:.3f}, decoding {floor_decode:.3f}", flush=True)

    # warm-up (first calls allocate, pick kernels)
    short = ids[: min(len(ids), args.context)]
    target_log_probs(composed, short, context=args.context, stride=args.stride, vocab_size=V)
    target_log_probs(base, short, context=args.context, stride=args.stride, vocab_size=V)

    # 1. scoring, interleaved
    sc = {"base": [], "composed": []}
    lp_base = lp_comp = None
    for r in range(args.repeats):
        order = ("base", "composed") if r % 2 == 0 else ("composed", "base")
        for which in order:
            model = base if which == "base" else composed
            t, lp = timed(lambda: target_log_probs(model, ids, context=args.context, stride=args.stride, vocab_size=V))
            sc[which].append(t)
            if which == "base":
                lp_base = lp
            else:
                lp_comp = lp
        print(f"  scoring rep {r}: base {sc['base'][-1]:.2f} s, composed {sc['composed'][-1]:.2f} s", flush=True)
    scored = len(ids) - 1
    score_ratio = med(sc["composed"]) / med(sc["base"])
    score_ratios = [c / b for c, b in zip(sc["composed"], sc["base"])]

    # 2. greedy decoding, batch 1, interleaved
    prompt = torch.as_tensor(ids[: args.prompt])[None]
    n_new = args.new_tokens
    gen = {
        "base_hf_generate": lambda: base.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                                                  min_new_tokens=n_new, do_sample=False, pad_token_id=0),
        "base_memreg_loop": lambda: plain.generate(prompt, max_new_tokens=n_new, eos_token_id=[]),
        "composed": lambda: composed.generate(prompt, max_new_tokens=n_new, eos_token_id=[]),
    }
    for fn in gen.values():
        fn()  # warm-up
    dec = {k: [] for k in gen}
    for r in range(args.decode_repeats):
        names = list(gen) if r % 2 == 0 else list(reversed(gen))
        for k in names:
            t, out = timed(gen[k])
            assert out.shape[1] == args.prompt + n_new, out.shape
            dec[k].append(t)
    dec_tps = {k: n_new / med(v) for k, v in dec.items()}
    dec_ratio = med(dec["composed"]) / med(dec["base_memreg_loop"])
    dec_ratio_hf = med(dec["composed"]) / med(dec["base_hf_generate"])
    print(f"  decoding tok/s: " + ", ".join(f"{k} {v:.1f}" for k, v in dec_tps.items()), flush=True)

    # profile of one composed scoring pass (what dominates)
    profile = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile as tprofile

        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            target_log_probs(composed, ids[: 4 * args.context], context=args.context, stride=args.stride, vocab_size=V)
        profile = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        print(profile)

    # 3. kNN-LM
    knn_res = None
    knn_folder = None
    if not args.skip_knn:
        print(f"  kNN-LM: datastore of {args.knn_keys:,} keys (built once, cached under {work})", flush=True)
        knn_folder, kinfo = build_knn(args, base, ids, work)
        knn, nprobe = load_knn(args, base, knn_folder)
        timed_index = TimedIndex(knn.index)
        knn.index = timed_index
        knn.target_log_probs(short, context=args.context, stride=args.stride)  # warm-up
        kt = {"base": [], "knn_part": [], "composed": [], "key_forward": [], "search": []}
        for r in range(args.knn_repeats):
            tb, lpb = timed(lambda: target_log_probs(base, ids, context=args.context, stride=args.stride, vocab_size=V))
            timed_index.seconds = 0.0
            keyt = TimedKeyModel()
            try:
                tk, lpk = timed(lambda: knn.target_log_probs(ids, context=args.context, stride=args.stride))
            finally:
                keyt.restore()
            tm, _ = timed(lambda: mixture_log_probs(lpb, [lpk], [args.weight]))
            tc, _ = timed(lambda: target_log_probs(composed, ids, context=args.context, stride=args.stride, vocab_size=V))
            kt["base"].append(tb)
            kt["knn_part"].append(tk + tm)
            kt["composed"].append(tc)
            kt["key_forward"].append(keyt.seconds)
            kt["search"].append(timed_index.seconds)
            print(f"  kNN rep {r}: base {tb:.2f} s, kNN part {tk:.2f} s (key fwd {keyt.seconds:.2f}, "
                  f"search {timed_index.seconds:.2f}), composed {tc:.2f} s", flush=True)
        knn_total = [b + k for b, k in zip(kt["base"], kt["knn_part"])]
        knn_res = {
            **kinfo, "nprobe": nprobe, "k": args.knn_k, "keys_source": "random Gaussian with the per-dimension "
            "mean/std of the base's last_ffn_input on real text; values uniform random token ids",
            "seconds_median": {"base": med(kt["base"]), "knn_lm_total": med(knn_total), "composed": med(kt["composed"]),
                               "knn_key_forward": med(kt["key_forward"]), "knn_faiss_search": med(kt["search"]),
                               "knn_rest": med(kt["knn_part"]) - med(kt["key_forward"]) - med(kt["search"])},
            "knn_lm_over_composed": med(knn_total) / med(kt["composed"]),
            "knn_lm_over_base": med(knn_total) / med(kt["base"]),
            "composed_over_base_same_reps": med(kt["composed"]) / med(kt["base"]),
            "knn_lm_tokens_per_s": scored / med(knn_total),
            "note": "memreg.knnlm runs the key model (here the base) a second time up to its last MLP; a kNN-LM "
                    "that reused the base's own forward would save key_forward seconds",
        }
        del knn, timed_index  # free the index (GBs) before the RSS children start
        import gc

        gc.collect()

    # 4. peak RSS in children
    print("  peak RSS in child processes ...", flush=True)
    rss = {"imports": run_child(args, "imports"), "base": run_child(args, "base"),
           "composed": run_child(args, "composed")}
    if knn_folder is not None:
        rss["base_knn"] = run_child(args, "knn", knn_folder=knn_folder)
    mem_bytes = weight_bytes(mem_dir)
    kb = 1024
    rss_res = {
        "children": rss,
        "memory_weight_bytes": mem_bytes,
        "base_weight_bytes": weight_bytes(base_dir),
        "peak_composed_minus_base_bytes": (rss["composed"]["maxrss_kb"] - rss["base"]["maxrss_kb"]) * kb,
        "loaded_composed_minus_base_bytes": (rss["composed"]["rss_loaded_kb"] - rss["base"]["rss_loaded_kb"]) * kb,
        "scored_tokens_in_child": args.rss_tokens,
    }
    rss_res["peak_extra_over_memory_weights"] = rss_res["peak_composed_minus_base_bytes"] / mem_bytes
    if "base_knn" in rss:
        rss_res["peak_knn_minus_base_bytes"] = (rss["base_knn"]["maxrss_kb"] - rss["base"]["maxrss_kb"]) * kb
        rss_res["knn_index_bytes"] = sum(p.stat().st_size for p in Path(knn_folder).glob("*") if p.suffix in (".faiss", ".npy"))

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"torch_threads": args.threads, "cpus": os.cpu_count(), "torch": torch.__version__,
                    "note": "2 shared CPU cores: absolute times drift, ratios are from interleaved runs"},
        "shapes": shapes,
        "scoring": {
            "tokens_scored": scored, "context": args.context, "stride": args.stride, "tokens_forwarded_per_member": fwd_tokens,
            "seconds": sc, "base_tokens_per_s": scored / med(sc["base"]), "composed_tokens_per_s": scored / med(sc["composed"]),
            "ratio_composed_over_base": score_ratio, "per_rep_ratios": score_ratios,
            "floor_1_plus_flops_mem_over_base": floor_score,
            "excess_over_floor": score_ratio / floor_score - 1,
            "perplexity_base": float(math.exp(-np.mean(lp_base))), "perplexity_composed": float(math.exp(-np.mean(lp_comp))),
        },
        "greedy_decoding": {
            "batch": 1, "prompt_tokens": args.prompt, "new_tokens": n_new, "seconds": dec, "tokens_per_s": dec_tps,
            "ratio_composed_over_same_loop_no_memory": dec_ratio, "ratio_composed_over_hf_generate": dec_ratio_hf,
            "ratio_same_loop_no_memory_over_hf_generate": med(dec["base_memreg_loop"]) / med(dec["base_hf_generate"]),
            "floor_1_plus_flops_mem_over_base": floor_decode,
            "excess_over_floor": dec_ratio / floor_decode - 1,
        },
        "knn_lm": knn_res,
        "peak_rss": rss_res,
        "profile": profile,
        "wall_seconds": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print_table(result)
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")


def print_table(r: dict) -> None:
    s, d, k, m = r["scoring"], r["greedy_decoding"], r["knn_lm"], r["peak_rss"]
    sh = r["shapes"]
    print(f"\n{sh['pair']}: base {sh['base']['params'] / 1e6:.1f} M, memory {sh['memory']['params'] / 1e6:.1f} M "
          f"({sh['memory_to_base_params']:.2f}x), fp32, {r['machine']['torch_threads']} threads")
    print(f"{'workload':34} {'base':>10} {'composed':>10} {'ratio':>7} {'floor':>7} {'excess':>7}")
    print(f"{'scoring tok/s (ctx %d, stride %d)' % (s['context'], s['stride']):34} {s['base_tokens_per_s']:10.1f} "
          f"{s['composed_tokens_per_s']:10.1f} {s['ratio_composed_over_base']:7.3f} "
          f"{s['floor_1_plus_flops_mem_over_base']:7.3f} {100 * s['excess_over_floor']:6.1f}%")
    tps = d["tokens_per_s"]
    print(f"{'greedy tok/s vs same loop':34} {tps['base_memreg_loop']:10.1f} {tps['composed']:10.1f} "
          f"{d['ratio_composed_over_same_loop_no_memory']:7.3f} {d['floor_1_plus_flops_mem_over_base']:7.3f} "
          f"{100 * d['excess_over_floor']:6.1f}%")
    print(f"{'greedy tok/s vs HF base.generate':34} {tps['base_hf_generate']:10.1f} {tps['composed']:10.1f} "
          f"{d['ratio_composed_over_hf_generate']:7.3f}")
    if k:
        sm = k["seconds_median"]
        print(f"kNN-LM ({k['keys']:,} keys, {k['factory']}, nprobe {k['nprobe']}, k {k['k']}): "
              f"{k['knn_lm_over_composed']:.2f}x the composed model, {k['knn_lm_over_base']:.2f}x the base "
              f"(composed {k['composed_over_base_same_reps']:.2f}x); kNN part: key forward {sm['knn_key_forward']:.1f} s, "
              f"search {sm['knn_faiss_search']:.1f} s, rest {sm['knn_rest']:.1f} s")
    c = m["children"]
    mb = 2**20
    print(f"peak RSS: base {c['base']['maxrss_kb'] / 1024:.0f} MiB, composed {c['composed']['maxrss_kb'] / 1024:.0f} MiB "
          f"(+{m['peak_composed_minus_base_bytes'] / mb:.0f} MiB; memory weights {m['memory_weight_bytes'] / mb:.0f} MiB, "
          f"{m['peak_extra_over_memory_weights']:.2f}x)"
          + (f", base+kNN-LM {c['base_knn']['maxrss_kb'] / 1024:.0f} MiB" if "base_knn" in c else ""))


if __name__ == "__main__":
    main()
