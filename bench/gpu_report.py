"""Markdown tables, for the README, from what a device run of bench/gpu_pipeline.sh handed back.

    python bench/gpu_report.py pipeline DIR     # DIR: the run's files (attach_*.json, pipeline.json)

(bench/gpu_quality.sh's results become tables through bench/quality.py itself: see that script's header.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def attach_md(r: dict) -> list[str]:
    sh, s = r["shapes"], r["scoring"]
    L = [f"**{sh['pair']}** on {sh.get('device')} ({sh.get('dtype')}): base {sh['base']['params'] / 1e6:.0f} M, memory "
         f"{sh['memory']['params'] / 1e6:.0f} M parameters ({sh.get('models') or 'random weights'}); floors: FLOPs "
         f"{s['floor_1_plus_flops_mem_over_base']:.2f} (scoring), weight bytes {r.get('floor_weight_bytes', float('nan')):.2f} "
         "(batch-1 decoding)", "",
         "| workload | base tok/s | composed tok/s | composed / base |", "|---|---:|---:|---:|",
         f"| scoring, ctx {s['context']} (as shipped) | {s['base_tokens_per_s']:,.0f} | {s['composed_tokens_per_s']:,.0f} | "
         f"{s['ratio_composed_over_base']:.3f} |"]
    if "ratio_composed_streams_over_base" in s:
        x = s["ratio_composed_streams_over_base"]
        L.append(f"| scoring, memory on a 2nd stream | {s['base_tokens_per_s']:,.0f} | {s['base_tokens_per_s'] / x:,.0f} | {x:.3f} |")
    for d in r.get("decoding") or []:
        for label, x in d["ratios"].items():
            same = "" if x.get("same_tokens_as_plain") in (True, None) else " (tokens differ)"
            L.append(f"| greedy, batch {d['batch']}: {label} | {x['base_tok_s']:,.1f} | {x['composed_tok_s']:,.1f} | "
                     f"{x['ratio']:.3f}{same} |")
        for name, err in (d.get("errors") or {}).items():
            L.append(f"| greedy, batch {d['batch']}: {name} | failed: {err} | | |")
    g = r.get("gpu_memory")
    if g:
        L += ["", f"Peak GPU memory while scoring: base {g['base_peak_bytes'] / 2**20:,.0f} MiB, composed "
                  f"{g['composed_peak_bytes'] / 2**20:,.0f} MiB."]
    return L


def pipeline_md(p: dict) -> list[str]:
    tp = p["throughput"]
    L = [f"`memreg train` on {p['device']} (torch {p['torch']}), teacher SmolLM2-135M ({p['smollm2']}): "
         f"{p['train_tokens'] or '?':,} tokens of Python sources, k = {p['k']}, exact torch search "
         f"(TF32 products{'' if p['tf32_search'] else ' off'}), memory = its first {p['init_layers']} blocks"
         + (f" ({p['memory_params'] / 1e6:.0f} M parameters)" if p.get("memory_params") else ""), "",
         "| stage | seconds | throughput |", "|---|---:|---|"]
    stages = p["stages"] + ([p["interrupted"]] if p.get("interrupted") else [])
    for st in stages:
        rate = f"{st['per_second']:,.0f} {st['unit']}/s" if st.get("per_second") else ""
        if st.get("interrupted"):
            rate += f"; stopped at {st['done']:,} of {st['total']:,} (whole stage ~{st['projected_total_s']} s)"
        L.append(f"| {st['stage']} | {st['seconds']:.1f} | {rate} |")
    L += ["", f"kNN stage: the search took {tp['knn_search_s']} s ({tp['knn_search_rows_per_s']} rows/s, "
              f"{tp['exact_search_tflops']} TFLOP/s of distance products), the rest (sparse targets on the CPU, writes) "
              f"{tp['knn_rest_s']} s. Training: {p['steps']} steps, {tp['train_tokens_per_s']} tokens/s. "
              f"Wall {p['wall_s']:.0f} s."]
    return L


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "pipeline":
        raise SystemExit(__doc__)
    folder = Path(argv[1])
    out: list[str] = []
    for name in ("attach_qwen2.json", "attach_smollm2.json"):
        if (folder / name).exists():
            out += attach_md(json.loads((folder / name).read_text())) + [""]
    if (folder / "pipeline.json").exists():
        out += pipeline_md(json.loads((folder / "pipeline.json").read_text()))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
