"""Does a domain-adapted teacher make better kNN targets? (The teacher's neighbours are the memory's training targets.)

    python bench/teacher_adaptation.py [--adapt-steps 60] [--work /tmp/memreg-adapt]

Trains two memory decoders on Debian's licence texts (/usr/share/common-licenses) with the shipped
bases (teacher models/memreg-base-large, init models/memreg-base-small), same settings and seed,
once with the teacher as shipped and once with the teacher first fine-tuned with CE on the training
split (never the held-out documents). Prints held-out perplexity of both bases alone and with the
memory (best grid weight), and the effective number of neighbours / tokens of p_kNN (mean exp(entropy)).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from memreg.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapt-steps", type=int, default=60)
    ap.add_argument("--adapt-lr", type=float, default=3e-4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/memreg-adapt"))
    ap.add_argument("--eval-fraction", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["shipped", "adapted"], help="run one of the two (e.g. in parallel)")
    args = ap.parse_args()
    rows = {}
    runs = [("shipped teacher", 0), (f"adapted teacher ({args.adapt_steps} steps)", args.adapt_steps)]
    runs = [r for r in runs if args.only is None or r[0].startswith(args.only)]
    for label, steps in runs:
        t0 = time.monotonic()
        cfg = TrainConfig(corpus=["/usr/share/common-licenses"], teacher=str(REPO / "models/memreg-base-large"),
                          init=str(REPO / "models/memreg-base-small"), out=args.work / f"out-{steps}",
                          eval_fraction=args.eval_fraction, seed=args.seed, adapt_teacher_steps=steps,
                          adapt_teacher_lr=args.adapt_lr)
        r = train(cfg)
        extra = r.card.training.extra
        rows[label] = {
            "bases": {Path(e.base).name: {"alone": round(e.perplexity_base, 3), "with_memory": round(e.perplexity_with_memory, 3),
                                          "weight": e.weight} for e in r.card.metrics.evaluations},
            "effective_neighbours": extra["knn_effective_neighbours"], "effective_tokens": extra["knn_effective_tokens"],
            "k": r.k, "temperature": r.temperature, "steps": r.steps, "eval_tokens": r.eval_tokens,
            "teacher_adaptation": extra["teacher_adaptation"], "seconds": round(time.monotonic() - t0, 1),
        }
        print(json.dumps({label: rows[label]}, indent=1), flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
