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
   base alone vs compose(base, memory, w=0.3); ratio next to the floor 1 + FLOPs(mem)/FLOPs(base).
2. greedy decoding (batch 1): the composition's generate vs the same model class with no memory
   (ComposedForCausalLM.from_members(base, [], [])) and vs the base's own generate; tokens/s and ratios.
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

On a GPU (bench/gpu_pipeline.sh part b):

    python bench/attach_overhead.py --device cuda --dtype bf16 --pair qwen2-1.5b --batches 1,16 \
        --variants plain,streams,graphs --skip-knn --skip-rss --out $OUT/attach_qwen.json
    python bench/attach_overhead.py --device cuda --dtype bf16 --pair smollm2 --smollm2 SPEC \
        --memory-dir MEMORY_FOLDER --batches 1,16 --variants plain,streams,graphs --skip-knn --skip-rss

  --pair qwen2-1.5b   base shaped like Qwen2.5-1.5B (hidden 1536, 28 layers, 12 heads / 2 KV, MLP 8960),
                      memory like Qwen2.5-0.5B (896, 24 layers, 14 / 2, MLP 4864), vocabulary 151,936
                      (--vocab to shrink it), tied embeddings, random weights built on the device;
                      --base-layers / --mem-layers override the layer counts (0 = the real ones)
  --pair smollm2      SmolLM2-135M (--smollm2: folder, .gguf, parts or shape-only folder; see
                      bench/gpu_common.py) + --memory-dir (a trained memory folder), or its first
                      --mem-layers blocks (the untrained init) when none is given
  --batches 1,16      greedy decoding at each batch size (prompts: consecutive slices of the text)
  --variants          plain: ComposedForCausalLM.generate / forward as shipped (members one after the other);
                      streams: the memories in a helper thread on their own CUDA stream
                      (bench/overlap.py StreamOverlapLM), scoring and decoding;
                      graphs: decoding with static caches, each member's one-token step one CUDA graph
                      (bench/overlap.py StaticDecoder), the members replayed one after the other
                      and on two streams; its base-alone twin is the reference of its ratio.
                      On a CPU, graphs run the same static-cache steps eagerly (a correctness rehearsal).
  Every variant's tokens are compared with plain greedy decoding (bf16 kernels may differ in the last
  bits, so a divergence is reported, not fatal). On CUDA, peak GPU memory replaces the RSS children.
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
    if pair == "qwen2-1.5b":  # Qwen2.5-1.5B and Qwen2.5-0.5B shapes; layer counts 0 = the real ones
        from transformers import Qwen2Config

        common = dict(vocab_size=vocab, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
        return (Qwen2Config(hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                            num_hidden_layers=base_layers or 28, **common),
                Qwen2Config(hidden_size=896, intermediate_size=4864, num_attention_heads=14,
                            num_hidden_layers=mem_layers or 24, **common))
    raise SystemExit(f"unknown --pair {pair!r}: gpt2, qwen, qwen2-1.5b or smollm2")


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
    sources = sorted(TEXT_DIR.iterdir()) if TEXT_DIR.is_dir() else sorted(Path(json.__file__).parent.parent.glob("*.py"))
    for p in sources:
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


# ----------------------------------------------------------------------------------- large pairs
def load_large_pair(args, work: Path, device, dtype):
    """(composed, tokenizer of the text, vocabulary) for --pair qwen2-1.5b (random, built on the device)
    and --pair smollm2 (SmolLM2 + a trained memory folder or its truncated init)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memreg.compose import ComposedForCausalLM

    if args.pair == "qwen2-1.5b":
        tok = AutoTokenizer.from_pretrained(TOKENIZER)  # only to turn real text into ids below the vocabulary
        V = args.vocab_size
        models = []
        for seed, cfg in zip((0, 1), configs(args.pair, args.base_layers, args.mem_layers, V)):
            torch.manual_seed(seed)
            with torch.device(device):
                models.append(AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval())
        args.models_note = "random weights built on the device"
        composed = ComposedForCausalLM.from_members(models[0], [models[1]], [args.weight], vocab_size=V, tokenizer=tok)
        return composed, tok, V
    if args.pair != "smollm2":
        raise SystemExit(f"unknown --pair {args.pair!r}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_common import resolve_smollm2

    from memreg.compose import compose
    from memreg.models import load_causal_lm
    from memreg.train.truncate import write_truncated_init

    smol, how = resolve_smollm2(args.smollm2, work)
    if args.base_layers:  # rehearsal: a shorter base
        cut = work / f"smollm2-first{args.base_layers}"
        if not (cut / "config.json").exists():
            write_truncated_init(smol, args.base_layers, cut)
        smol, how = str(cut), f"{how}, cut to its first {args.base_layers} blocks"
    tok = AutoTokenizer.from_pretrained(smol)
    base = load_causal_lm(smol, dtype=dtype, device=device)
    mem = args.memory_dir
    if mem and (Path(mem) / "config.json").exists():
        mem_note = f"memory {mem}"
    else:
        n = args.mem_layers or 4
        mem = work / f"smollm2-init-first{n}"
        if not (mem / "config.json").exists():
            write_truncated_init(smol, n, mem)
        mem_note = f"memory = its first {n} blocks, untrained" + (f" ({args.memory_dir} not found)" if args.memory_dir else "")
    args.models_note = f"SmolLM2: {how}; {mem_note}"
    return compose(base, [str(mem)], weights=[args.weight], tokenizer=tok, dtype=dtype), tok, len(tok)


def decode_batch(args, batch: int, ids, composed, plain, streamed, V: int, timed_sync) -> dict:
    """Greedy decoding of `batch` prompts with every variant asked for, interleaved; tokens/s and ratios."""
    import numpy as np
    import torch

    device = composed.device
    P, n_new = args.prompt, args.new_tokens
    src = ids if len(ids) >= batch * P else np.resize(ids, batch * P)
    prompt = torch.as_tensor(np.asarray(src[: batch * P]).reshape(batch, P)).to(device)
    base = composed.base
    gen = {
        "base_hf_generate": lambda: base.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                                                  min_new_tokens=n_new, do_sample=False, pad_token_id=0),
        "base_memreg_loop": lambda: plain.generate(prompt, max_new_tokens=n_new, eos_token_id=[]),
        "composed": lambda: composed.generate(prompt, max_new_tokens=n_new, eos_token_id=[]),
    }
    if streamed is not None:
        gen["composed_streams"] = lambda: streamed.generate(prompt, max_new_tokens=n_new, eos_token_id=[])
    errors: dict[str, str] = {}
    tag = "graph" if device.type == "cuda" else "static_eager"
    if "graphs" in args.variant_list:
        from overlap import StaticDecoder, greedy_static

        graph = device.type == "cuda"
        decs = [StaticDecoder(m, batch, P + n_new, V, graph=graph) for m in (base, composed.members[1])]
        mw = composed.member_weights
        gen[f"base_{tag}"] = lambda: greedy_static(decs[:1], [], prompt, n_new)
        gen[f"composed_{tag}"] = lambda: greedy_static(decs, mw, prompt, n_new)
        if graph:
            gen[f"composed_{tag}_2streams"] = lambda: greedy_static(decs, mw, prompt, n_new, streams=True)
    outputs = {}
    for name in list(gen):  # warm-up; a variant that fails (e.g. a capture the installed transformers refuses) is dropped
        try:
            outputs[name] = gen[name]().cpu()
        except Exception as exc:  # noqa: BLE001 - reported, the others still run
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            del gen[name]
    secs = {k: [] for k in gen}
    for r in range(args.decode_repeats):
        for k in (list(gen) if r % 2 == 0 else list(reversed(gen))):
            t, out = timed_sync(gen[k])
            assert out.shape == (batch, P + n_new), out.shape
            secs[k].append(t)
    tps = {k: batch * n_new / med(v) for k, v in secs.items()}

    def same(a: str, ref: str):
        if a not in outputs or ref not in outputs:
            return None
        x, y = outputs[a], outputs[ref]
        if torch.equal(x, y):
            return True
        diff = (x != y).any(0).nonzero()
        return f"first difference at position {int(diff[0]) - P} of {n_new} new tokens"

    pairs = [("composed / base, memreg's loop (as shipped)", "composed", "base_memreg_loop"),
             ("composed / base, transformers' generate", "composed", "base_hf_generate"),
             ("composed, memory on a 2nd stream / base, memreg's loop", "composed_streams", "base_memreg_loop"),
             (f"composed / base, static caches ({tag})", f"composed_{tag}", f"base_{tag}"),
             (f"composed, 2 streams / base, static caches ({tag})", f"composed_{tag}_2streams", f"base_{tag}")]
    ratios = {}
    for label, c, b in pairs:
        if c in tps and b in tps:
            ratios[label] = {"composed": c, "base": b, "composed_tok_s": tps[c], "base_tok_s": tps[b],
                             "ratio": tps[b] / tps[c], "same_tokens_as_plain": same(c, "composed")}
    comp = [k for k in tps if k.startswith("composed")]
    bases = [k for k in tps if k.startswith("base")]
    fc, fb = max(comp, key=tps.get), max(bases, key=tps.get)
    ratios["fastest composed / fastest base"] = {"composed": fc, "base": fb, "composed_tok_s": tps[fc], "base_tok_s": tps[fb],
                                                 "ratio": tps[fb] / tps[fc], "same_tokens_as_plain": same(fc, "composed")}
    for k in bases:
        if k != "base_memreg_loop" and same(k, "base_memreg_loop") is not True:
            errors.setdefault(f"{k} tokens", str(same(k, "base_memreg_loop")))
    line = ", ".join(f"{k} {v:.1f}" for k, v in tps.items())
    print(f"  decoding batch {batch}, tok/s: {line}", flush=True)
    return {"batch": batch, "prompt_tokens": P, "new_tokens": n_new, "seconds": secs, "tokens_per_s": tps,
            "ratios": ratios, "errors": errors}


# ----------------------------------------------------------------------------------- main
def main() -> None:
    if "--drafting" in sys.argv:  # 5. decoding with drafts: bench/drafting.py (trained memories, not random pairs)
        from drafting import main as drafting_main

        drafting_main([a for a in sys.argv[1:] if a != "--drafting"])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="gpt2", choices=["gpt2", "qwen", "qwen2-1.5b", "smollm2"])
    ap.add_argument("--base-layers", type=int, default=None, help="[gpt2/qwen: 4; qwen2-1.5b: 28; smollm2: all 30]")
    ap.add_argument("--mem-layers", type=int, default=None, help="[gpt2/qwen: 2; qwen2-1.5b: 24; smollm2 init: 4]")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batches", default="1", help="greedy decoding batch sizes, comma-separated (e.g. 1,16)")
    ap.add_argument("--variants", default="plain", help="plain, streams, graphs (comma-separated; plain always runs)")
    ap.add_argument("--vocab-size", type=int, default=151_936, help="qwen2-1.5b: vocabulary (Qwen2.5's 151,936)")
    ap.add_argument("--smollm2", default="auto", help="smollm2 pair: SmolLM2 folder, .gguf, parts or shape-only folder")
    ap.add_argument("--memory-dir", default=None, help="smollm2 pair: a trained memory folder (default: the untrained init)")
    ap.add_argument("--skip-rss", action="store_true", help="no peak-RSS child processes (CPU)")
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
    if args.pair in ("gpt2", "qwen"):
        args.base_layers = 4 if args.base_layers is None else args.base_layers
        args.mem_layers = 2 if args.mem_layers is None else args.mem_layers
    args.batch_list = [int(b) for b in args.batches.split(",") if b.strip()]
    args.variant_list = {v.strip() for v in args.variants.split(",") if v.strip()} | {"plain"}
    if args.variant_list - {"plain", "streams", "graphs"}:
        raise SystemExit(f"--variants {args.variants}: plain, streams, graphs")
    if args.child:
        return child(args)

    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from memreg.compose import compose
    from memreg.evaluate import mixture_log_probs, target_log_probs

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 leftovers (the mixture) on tensor cores
    if not args.skip_knn:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    base_dir = mem_dir = None
    if args.pair in ("gpt2", "qwen"):
        base_dir, mem_dir = build_models(args, work)
        tok = AutoTokenizer.from_pretrained(TOKENIZER)
        composed = compose(base_dir, [mem_dir], weights=[args.weight], dtype=dtype).to(device)  # folders: tokenizers checked
        V = len(tok)
    else:
        composed, tok, V = load_large_pair(args, work, device, dtype)
    args.vocab = V
    base = composed.base
    memory = composed.members[1]
    from memreg.compose import ComposedForCausalLM

    # the same model class and generate, no memory; the composition's vocabulary (a member may have more rows)
    plain = ComposedForCausalLM.from_members(base, [], [], vocab_size=composed.vocab_size, tokenizer=tok)
    streamed = None
    if "streams" in args.variant_list:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from overlap import StreamOverlapLM

        streamed = StreamOverlapLM.like(composed)
    ids = real_ids(tok, args.tokens)

    p_base, p_mem = param_count(base), param_count(memory)
    mean_ctx, fwd_tokens = scoring_ctx(len(ids), args.context, args.stride)
    dec_ctx = args.prompt + args.new_tokens / 2
    floor_score = 1 + flops_per_token(memory, mean_ctx) / flops_per_token(base, mean_ctx)
    floor_decode = 1 + flops_per_token(memory, dec_ctx) / flops_per_token(base, dec_ctx)
    floor_bytes = 1 + p_mem / p_base  # batch-1 decoding reads every weight once per token
    shapes = {
        "pair": args.pair,
        "base": {k: v for k, v in base.config.to_dict().items() if k in (
            "model_type", "n_embd", "n_head", "n_layer", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "num_hidden_layers", "vocab_size")} | {"params": p_base},
        "memory": {k: v for k, v in memory.config.to_dict().items() if k in (
            "model_type", "n_embd", "n_head", "n_layer", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "num_hidden_layers", "vocab_size")} | {"params": p_mem},
        "memory_to_base_params": p_mem / p_base,
        "dtype": str(dtype).removeprefix("torch."), "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "models": getattr(args, "models_note", None),
    }
    print(f"base {p_base / 1e6:.1f} M params, memory {p_mem / 1e6:.1f} M ({p_mem / p_base:.2f} of the base), "
          f"{shapes['dtype']} on {shapes['device']}; floor scoring {floor_score:.3f}, decoding {floor_decode:.3f} "
          f"(FLOPs), {floor_bytes:.3f} (weight bytes)", flush=True)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def timed_sync(fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t, out

    # warm-up (first calls allocate, pick kernels)
    short = ids[: min(len(ids), args.context)]
    score_models = {"base": base, "composed": composed} | ({"composed_streams": streamed} if streamed else {})
    for model in score_models.values():
        target_log_probs(model, short, context=args.context, stride=args.stride, vocab_size=V)

    # 1. scoring, interleaved
    sc = {k: [] for k in score_models}
    lps = {}
    for r in range(args.repeats):
        order = list(score_models) if r % 2 == 0 else list(reversed(score_models))
        for which in order:
            model = score_models[which]
            t, lps[which] = timed_sync(lambda: target_log_probs(model, ids, context=args.context, stride=args.stride,
                                                                vocab_size=V))
            sc[which].append(t)
        print(f"  scoring rep {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in sc.items()), flush=True)
    lp_base, lp_comp = lps["base"], lps["composed"]
    scored = len(ids) - 1
    score_ratio = med(sc["composed"]) / med(sc["base"])
    score_ratios = [c / b for c, b in zip(sc["composed"], sc["base"])]

    # 2. greedy decoding at each batch size, interleaved
    decoding = [decode_batch(args, b, ids, composed, plain, streamed, V, timed_sync) for b in args.batch_list]
    d1 = next((d for d in decoding if d["batch"] == 1), decoding[0])
    dec, n_new = d1["seconds"], args.new_tokens
    dec_tps = d1["tokens_per_s"]
    dec_ratio = med(dec["composed"]) / med(dec["base_memreg_loop"])
    dec_ratio_hf = med(dec["composed"]) / med(dec["base_hf_generate"])

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

    # 4. peak memory: RSS of child processes (CPU), or the GPU allocator's peak while scoring
    rss_res = gpu_mem = None
    if cuda:
        gpu_mem = {}
        for which in ("base", "composed"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            target_log_probs(score_models[which], ids[: args.rss_tokens], context=args.context, stride=args.stride, vocab_size=V)
            gpu_mem[f"{which}_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        gpu_mem["memory_weight_bytes"] = sum(p.numel() * p.element_size() for p in memory.parameters())
    elif not args.skip_rss:
        if base_dir is None:
            raise SystemExit("peak RSS children need a gpt2/qwen pair (folders): pass --skip-rss")
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
                    "transformers": __import__("transformers").__version__, "device": shapes["device"],
                    "note": "ratios are from interleaved runs" + ("" if cuda else "; 2 shared CPU cores: absolute times drift")},
        "shapes": shapes,
        "scoring": {
            "tokens_scored": scored, "context": args.context, "stride": args.stride, "tokens_forwarded_per_member": fwd_tokens,
            "seconds": sc, "base_tokens_per_s": scored / med(sc["base"]), "composed_tokens_per_s": scored / med(sc["composed"]),
            "ratio_composed_over_base": score_ratio, "per_rep_ratios": score_ratios,
            "floor_1_plus_flops_mem_over_base": floor_score,
            "excess_over_floor": score_ratio / floor_score - 1,
            "perplexity_base": float(math.exp(-np.mean(lp_base))), "perplexity_composed": float(math.exp(-np.mean(lp_comp))),
        } | ({"ratio_composed_streams_over_base": med(sc["composed_streams"]) / med(sc["base"]),
              "composed_streams_max_abs_diff": float(np.max(np.abs(lps["composed_streams"] - lp_comp)))}
             if "composed_streams" in sc else {}),
        "greedy_decoding": {
            "batch": 1, "prompt_tokens": args.prompt, "new_tokens": n_new, "seconds": dec, "tokens_per_s": dec_tps,
            "ratio_composed_over_same_loop_no_memory": dec_ratio, "ratio_composed_over_hf_generate": dec_ratio_hf,
            "ratio_same_loop_no_memory_over_hf_generate": med(dec["base_memreg_loop"]) / med(dec["base_hf_generate"]),
            "floor_1_plus_flops_mem_over_base": floor_decode,
            "excess_over_floor": dec_ratio / floor_decode - 1,
        },
        "decoding": decoding,
        "floor_weight_bytes": floor_bytes,
        "knn_lm": knn_res,
        "peak_rss": rss_res,
        "gpu_memory": gpu_mem,
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
          f"({sh['memory_to_base_params']:.2f}x), {sh.get('dtype', 'float32')} on {sh.get('device', 'cpu')}, "
          f"{r['machine']['torch_threads']} threads" + (f"; {sh['models']}" if sh.get("models") else ""))
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
    if "ratio_composed_streams_over_base" in s:
        print(f"{'scoring, memory on a 2nd stream':34} {'':10} {s['base_tokens_per_s'] / s['ratio_composed_streams_over_base']:10.1f} "
              f"{s['ratio_composed_streams_over_base']:7.3f}   (max |d log p| vs plain {s['composed_streams_max_abs_diff']:.1e})")
    for dd in r.get("decoding") or []:
        print(f"greedy decoding, batch {dd['batch']} ({dd['new_tokens']} new tokens; floor: FLOPs "
              f"{d['floor_1_plus_flops_mem_over_base']:.3f}, weight bytes {r.get('floor_weight_bytes', float('nan')):.3f}):")
        for name, x in dd["ratios"].items():
            print(f"  {name:58} {x['composed_tok_s']:9.1f} / {x['base_tok_s']:9.1f} tok/s = {x['ratio']:.3f}"
                  + ("" if x.get("same_tokens_as_plain", True) else f"  (tokens differ from plain: {x['same_tokens_as_plain']})"))
        for name, err in dd.get("errors", {}).items():
            print(f"  {name}: FAILED ({err})")
    if k:
        sm = k["seconds_median"]
        print(f"kNN-LM ({k['keys']:,} keys, {k['factory']}, nprobe {k['nprobe']}, k {k['k']}): "
              f"{k['knn_lm_over_composed']:.2f}x the composed model, {k['knn_lm_over_base']:.2f}x the base "
              f"(composed {k['composed_over_base_same_reps']:.2f}x); kNN part: key forward {sm['knn_key_forward']:.1f} s, "
              f"search {sm['knn_faiss_search']:.1f} s, rest {sm['knn_rest']:.1f} s")
    g = r.get("gpu_memory")
    if g:
        print(f"peak GPU memory while scoring: base {g['base_peak_bytes'] / 2**20:.0f} MiB, composed "
              f"{g['composed_peak_bytes'] / 2**20:.0f} MiB (memory weights {g['memory_weight_bytes'] / 2**20:.0f} MiB)")
    if not m:
        return
    c = m["children"]
    mb = 2**20
    print(f"peak RSS: base {c['base']['maxrss_kb'] / 1024:.0f} MiB, composed {c['composed']['maxrss_kb'] / 1024:.0f} MiB "
          f"(+{m['peak_composed_minus_base_bytes'] / mb:.0f} MiB; memory weights {m['memory_weight_bytes'] / mb:.0f} MiB, "
          f"{m['peak_extra_over_memory_weights']:.2f}x)"
          + (f", base+kNN-LM {c['base_knn']['maxrss_kb'] / 1024:.0f} MiB" if "base_knn" in c else ""))


if __name__ == "__main__":
    main()
