"""Router vs the best fixed weight, on the family track's real models (issue 27).

    python bench/router.py            # writes bench/results/router.{json,md}

Members: Qwen2.5-Coder-0.5B (float32, dequantised from the PyPI GGUF by bench/real_models.py) and the
family track's memory (runs/family-cpu/pkg/family_memory_s0: 2 blocks of the 0.5B, trained on the
Python 3.11 docs). Texts, all real:
  domain   the family track's held-out split (runs/family-cpu/data/test-qwen.npz): its first 20
           documents are held out (the family track's rows); the other documents are fitting text.
  general  Debian's licence texts (/usr/share/common-licenses), one document per licence, cut to 256
           tokens: alternate documents fit / held out.
Fitting text is domain + general (the router must learn where the memory helps); the fixed weight it is
compared with is EM's on the same fitting text ("fixed, fitted on the mix"), and EM's on the domain
fitting text alone is the weight a domain memory ships with ("fixed, domain weight"). Held-out text is
only scored. Every router variant is fitted on the same collected features (one pass of each member),
so the ablation rows differ only in what the router reads. Intervals: paired bootstrap over held-out
documents (bench/quality_stats.py). Windows of 256 tokens, stride 128.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
import quality_stats as qs  # noqa: E402

BASE = ROOT / "runs" / "real-models" / "qwen2.5-coder-0.5b-hf"
MEMORY = ROOT / "runs" / "family-cpu" / "pkg" / "family_memory_s0"
DATA = ROOT / "runs" / "family-cpu" / "data"
OUT = ROOT / "bench" / "results"
CONTEXT, STRIDE, HELD_DOCS = 256, 128, 20
VARIANTS = {  # name -> features
    "entropy": ["entropy"],
    "top1": ["top1"],
    "entropy+top1+agreement (default)": ["entropy", "top1", "agreement"],
    "lmdeploy set: hidden+top1+entropy": ["hidden", "top1", "entropy"],
    "all four": ["entropy", "top1", "agreement", "hidden"],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def general_docs(tok, n_docs: int = 24) -> list[np.ndarray]:
    from tests.licences import licence_texts  # real English text that ships with the machine

    out = []
    for text in licence_texts()[:n_docs]:
        out.append(np.asarray(tok(text, add_special_tokens=False)["input_ids"][:255] + [tok.eos_token_id], dtype=np.int64))
    return out


def collect_docs(model, docs: list[np.ndarray]):
    """Features and target log-probs of each document (scored alone), and each target's document index."""
    from memreg.router.features import RouterInputs
    from memreg.router.fitting import Collected, collect

    parts, doc_of = [], []
    for i, d in enumerate(docs):
        c = collect(model, [d], hidden=True, context=CONTEXT, stride=STRIDE, batch_size=1)
        parts.append(c)
        doc_of.append(np.full(len(c), i))
    return Collected(RouterInputs.cat([p.inputs for p in parts]), torch.cat([p.targets for p in parts])), np.concatenate(doc_of)


def domain_docs() -> list[np.ndarray]:
    z = np.load(DATA / "test-qwen.npz")
    ids, doc = z["ids"], z["doc"]
    # doc[t-1] is the document of target t; token 0 belongs to document 0
    owner = np.concatenate([[0], doc])
    return [ids[owner == i] for i in range(int(owner.max()) + 1)]


def main() -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memreg.compose import ComposedForCausalLM
    from memreg.fit import em_weights
    from memreg.mixture import mix_log_probs
    from memreg.router.fitting import Collected, fit_router_on, router_config_for
    from memreg.router.features import RouterInputs

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    load = os.getloadavg()
    t0 = time.monotonic()
    tok = AutoTokenizer.from_pretrained(BASE)
    base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()
    mem = AutoModelForCausalLM.from_pretrained(MEMORY, dtype=torch.float32).eval()
    model = ComposedForCausalLM.from_members(base, [mem], [0.0], tokenizer=tok, names=["family_memory_s0"])
    dom = domain_docs()
    gen = general_docs(tok)
    log(f"domain {len(dom)} docs, general {len(gen)} docs; collecting features (one pass of each member)")
    t1 = time.monotonic()
    dom_held, dom_held_doc = collect_docs(model, dom[:HELD_DOCS])
    dom_fit, _ = collect_docs(model, dom[HELD_DOCS:])
    gen_held, gen_held_doc = collect_docs(model, gen[1::2])
    gen_fit, _ = collect_docs(model, gen[0::2])
    collect_s = time.monotonic() - t1
    n_scored = len(dom_held) + len(dom_fit) + len(gen_held) + len(gen_fit)
    log(f"collected {n_scored} positions in {collect_s:.0f} s")

    def cat(a: Collected, b: Collected) -> Collected:
        return Collected(RouterInputs.cat([a.inputs, b.inputs]), torch.cat([a.targets, b.targets]))

    # interleave domain and general fitting positions in blocks so the stopping split (last tenth) holds both
    fit = cat(dom_fit, gen_fit)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(fit)))
    fit = fit.take(perm)
    held = {"domain": (dom_held, dom_held_doc), "general": (gen_held, gen_held_doc)}

    def lp_of(c: Collected, w: list[float]) -> np.ndarray:
        return mix_log_probs([c.targets[:, 0], c.targets[:, 1]], w).numpy()

    em_mix = em_weights([fit.targets[:, 0].numpy(), fit.targets[:, 1].numpy()]).weights
    em_dom = em_weights([dom_fit.targets[:, 0].numpy(), dom_fit.targets[:, 1].numpy()]).weights
    rows: dict[str, list] = {"domain": [], "general": []}
    ref: dict[str, np.ndarray] = {}
    for text, (c, doc) in held.items():
        b = c.targets[:, 0].numpy()
        fixed = lp_of(c, em_mix)
        ref[text] = fixed
        rows[text].append({"method": "base alone", "test_ppl": round(qs.ppl(b), 4), "vs_base": None, "vs_fixed": None})
        rows[text].append({"method": f"fixed, domain weight (EM on domain fitting text, w={em_dom[0]:.3f})",
                           "test_ppl": round(qs.ppl(lp_of(c, em_dom)), 4), "vs_base": qs.paired_ratio(lp_of(c, em_dom), b, doc),
                           "vs_fixed": qs.paired_ratio(lp_of(c, em_dom), fixed, doc)})
        rows[text].append({"method": f"fixed, fitted on the mix (EM, w={em_mix[0]:.3f})", "test_ppl": round(qs.ppl(fixed), 4),
                           "vs_base": qs.paired_ratio(fixed, b, doc), "vs_fixed": None})
    costs = {}
    for name, feats in VARIANTS.items():
        config = router_config_for(model, base_name=str(BASE.name), features=feats, hidden_units=32, hidden_projection=16)
        t2 = time.monotonic()
        fitted = fit_router_on(fit, dom_held, config, steps=400, lr=1e-2, dataset="bench/router.py fitting text")
        fit_s = time.monotonic() - t2
        router = fitted.router
        from memreg.router.fitting import router_log_probs

        for text, (c, doc) in held.items():
            lp = router_log_probs(router, c)
            rows[text].append({"method": f"router: {name}", "test_ppl": round(qs.ppl(lp), 4),
                               "vs_base": qs.paired_ratio(lp, c.targets[:, 0].numpy(), doc),
                               "vs_fixed": qs.paired_ratio(lp, ref[text], doc), "steps_kept": router.config.fit.steps})
        with torch.no_grad():  # router cost per token, on the collected features (features already computed)
            t3 = time.perf_counter()
            for _ in range(5):
                router(dom_held.inputs)
            per_tok_us = (time.perf_counter() - t3) / 5 / len(dom_held) * 1e6
        params = sum(p.numel() for p in router.parameters())
        costs[name] = {"parameters": params, "router_flops_per_token": 2 * params, "fit_seconds": round(fit_s, 1),
                       "router_us_per_token": round(per_tok_us, 3)}
        log(f"{name}: domain {rows['domain'][-1]['test_ppl']} general {rows['general'][-1]['test_ppl']} ({fit_s:.0f} s)")
    vocab = model.vocab_size
    result = {
        "what": "router vs best fixed weight on held-out text (issue 27), Qwen2.5-Coder-0.5B + the family memory",
        "members": {"base": str(BASE.relative_to(ROOT)), "memory": str(MEMORY.relative_to(ROOT))},
        "windows": {"context": CONTEXT, "stride": STRIDE},
        "tokens": {"fit_domain": len(dom_fit), "fit_general": len(gen_fit), "held_domain": len(dom_held),
                   "held_general": len(gen_held), "held_domain_docs": HELD_DOCS, "held_general_docs": len(gen[1::2])},
        "fixed_weights": {"mix": em_mix, "domain": em_dom},
        "rows": rows,
        "costs": costs,
        "feature_cost_note": (f"entropy and top-1 read the whole distribution: ~{3 * vocab} flops per member per token "
                              f"(vocabulary {vocab}); the base's LM head alone is ~{2 * vocab * 896} flops per token"),
        "collect_seconds": round(collect_s, 1),
        "wall_seconds": round(time.monotonic() - t0, 1),
        "load": {"loadavg_at_start": [round(x, 2) for x in load], "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                 "note": "2 CPU cores shared with other agents' jobs: not idle; timings are not idle timings"},
        "torch_threads": torch.get_num_threads(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "router.json").write_text(json.dumps(result, indent=1) + "\n")
    (OUT / "router.md").write_text(report(result))
    log(f"wrote {OUT / 'router.json'} and router.md")
    return 0


def report(r: dict) -> str:
    def ratio(x):
        return "-" if x is None else f"{x['ratio']:.4f} [{x['ci95'][0]:.4f}, {x['ci95'][1]:.4f}]"

    lines = ["# Router vs best fixed weight (bench/router.py)", "", r["what"] + ".", "",
             f"Tokens: {json.dumps(r['tokens'])}. Windows {r['windows']['context']}/{r['windows']['stride']}. "
             f"Load: {r['load']['note']} (loadavg {r['load']['loadavg_at_start']} at start).", ""]
    for text in ("domain", "general"):
        lines += [f"## Held-out {text} text", "", "| method | perplexity | vs base | vs fixed (mix EM) |", "|---|---|---|---|"]
        for row in r["rows"][text]:
            lines.append(f"| {row['method']} | {row['test_ppl']:.3f} | {ratio(row['vs_base'])} | {ratio(row['vs_fixed'])} |")
        lines.append("")
    lines += ["Ratios are perplexity ratios with paired 95 % bootstrap intervals over held-out documents: below 1, the "
              "row is better than the reference.", "", "## Cost", "", "| router | parameters | flops/token | µs/token (loaded machine) |",
              "|---|---|---|---|"]
    for name, c in r["costs"].items():
        lines.append(f"| {name} | {c['parameters']} | {c['router_flops_per_token']} | {c['router_us_per_token']} |")
    lines += ["", r["feature_cost_note"] + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
