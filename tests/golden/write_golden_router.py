"""Write tests/golden/router-format1/: a router as `save_router` writes it (router_config.json +
router.safetensors, format 1) and a package card listing it (memreg.json with metrics.router), from a
router fitted on tiny real models and licence text. Run once; the set is never rewritten.

    python tests/golden/write_golden_router.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

OUT = HERE / "router-format1"


def main() -> int:
    import torch
    from tiny_lms import LICENSES, gpt2, llama, real_text, train_tokenizer

    from memreg.compose import ComposedForCausalLM
    from memreg.router import fit_router, save_router
    from memreg.schemas import Metrics, PackageCard
    from memreg.tune import router_record

    if OUT.exists():
        print(f"{OUT} exists: golden sets are never rewritten", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    tok = train_tokenizer(real_text(LICENSES[:3], limit=60_000))
    v = len(tok)
    model = ComposedForCausalLM.from_members(gpt2(v, 0), [llama(v, 2)], [0.0], tokenizer=tok, names=["law"])
    text = [t[:3000] for t in real_text(LICENSES[:2], limit=6_000)]
    fitted = fit_router(model, text, base_name="tiny-gpt2", hidden_units=4, steps=40, context=64, stride=32,
                        threshold=0.05, dataset="licence text (golden)")
    save_router(fitted.router.float(), OUT)
    card = PackageCard(name="law", version="1.1.0", metrics=Metrics(recommended_weight=0.3, router=router_record(fitted)))
    (OUT / "memreg.json").write_text(card.model_dump_json(indent=2, exclude_none=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
