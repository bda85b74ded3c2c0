"""Which peak learning rate should `memreg train` default to? Measured, not guessed.

It reuses the finished stages of `python examples/quickstart.py --domain D` (datastore and kNN
targets built with the adapted small base as teacher); on the same batches and targets it trains the
memory from the same pretrained init (memreg-base-small) at each learning rate of a grid for a fixed
number of epochs, scoring the held-out documents of memreg train's split twice an epoch. Printed
per rate: the init's held-out perplexity, the perplexity at the first evaluation after warm-up (a
rate that makes a pretrained init *worse* before it makes it better fails the brief), the best
perplexity and when it came.

    python examples/quickstart.py && python examples/quickstart.py --domain code   # the stages
    python bench/lr_choice.py                         # law and code (~20 min on 2 cores)
    python bench/lr_choice.py --domains law --lrs 3e-4 1e-3

Writes bench/results/lr_choice.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "models" / "memreg-base-small"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", nargs="+", default=["law", "code"])
    ap.add_argument("--lrs", nargs="+", type=float, default=[3e-4, 1e-3, 3e-3])
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--runs", type=Path, default=REPO / "runs", help="where the quickstart runs are")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "lr_choice.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    results = {}
    for domain in args.domains:
        results[domain] = sweep(domain, args.lrs, args.epochs, args.runs / f"quickstart-{domain}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    for domain, rows in results.items():
        print(f"\n{domain}: init {rows['init_perplexity']:.2f} held-out perplexity, {rows['steps_per_epoch']} steps/epoch")
        print(f"{'lr':>8} {'first eval':>11} {'best':>8} {'best at':>9} {'last':>8}  worse first?")
        for r in rows["runs"]:
            print(f"{r['lr']:>8g} {r['first']:>11.2f} {r['best']:>8.2f} {r['best_step']:>9} {r['last']:>8.2f}  "
                  f"{'YES' if r['first'] > rows['init_perplexity'] else 'no'}")


def sweep(domain: str, lrs: list[float], epochs: float, work: Path) -> dict:
    from memreg.evaluate import target_log_probs
    from memreg.models import load_causal_lm
    from memreg.train import TrainConfig
    from memreg.train.corpus import TokenArray
    from memreg.train.knn import open_targets
    from memreg.train.trainer import BlockBatches, schedule, train_loop

    stages = work / "stages"
    if not (stages / "run.json").is_file():
        raise SystemExit(f"no finished memreg train run in {stages}: run `python examples/quickstart.py --domain {domain}`")
    (corpus_dir,) = stages.glob("corpus-*")
    (knn_dir,) = stages.glob("knn-*")
    block = json.loads((stages / "run.json").read_text())["settings"]["block_size"]
    card = json.loads(next(work.glob("*/memreg.json")).read_text())
    cfg = TrainConfig(corpus=["-"], teacher="-", init="-", out=work / "unused")  # the defaults
    tokens = TokenArray(corpus_dir, "train")
    val = TokenArray(corpus_dir, "eval").slice(0, cfg.val_tokens)
    batches = BlockBatches(tokens, *open_targets(knn_dir), block_size=block, batch_size=cfg.batch_size, seed=0)
    sched = schedule(len(batches.spans), batch_size=cfg.batch_size, grad_accum=1, steps=None, epochs=epochs,
                     warmup_fraction=cfg.warmup_fraction)
    vocab = len(__import__("transformers").AutoTokenizer.from_pretrained(SMALL))

    def validate(model) -> dict[str, float]:
        lp = target_log_probs(model, val, context=block, stride=block, vocab_size=vocab)
        return {"val_loss": float(-lp.mean())}

    runs = []
    every = max(1, sched.steps_per_epoch // 2)
    for lr in lrs:
        t0 = time.monotonic()
        out = train_loop(load_causal_lm(SMALL), batches, work / "lr_choice" / f"lr-{lr:g}", sched=sched, lr=lr, weight_decay=0.0,
                         beta=cfg.beta, grad_accum=1, vocab_size=vocab, seed=0, checkpoint_every=10**9,
                         validate=validate, eval_every=every)
        ppl = [math.exp(p["val_loss"]) for p in out.stopping.curve]
        first_after_warmup = next(i for i, p in enumerate(out.stopping.curve) if p["step"] >= sched.warmup_steps)
        runs.append({"lr": lr, "first": ppl[max(1, first_after_warmup)], "best": min(ppl),
                     "best_step": out.stopping.best_step, "last": ppl[-1], "curve": ppl,
                     "steps": [p["step"] for p in out.stopping.curve], "seconds": round(time.monotonic() - t0, 1)})
        print(f"{domain} lr {lr:g}: " + " ".join(f"{p:.1f}" for p in ppl), flush=True)
    init_ppl = runs[0]["curve"][0]  # step 0: the untrained init, the same for every rate
    return {"init_perplexity": init_ppl, "steps_per_epoch": sched.steps_per_epoch, "warmup_steps": sched.warmup_steps,
            "eval_every": every, "val_tokens": int(len(val)), "epochs": epochs, "runs": runs,
            "default_run": {"lr": card["training"]["learning_rate"], "steps": card["training"]["steps"],
                            "validation": card["training"]["extra"]["validation"],
                            "curve": card["training"]["extra"]["learning_curve"]}}


if __name__ == "__main__":
    main()
