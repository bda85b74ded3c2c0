"""Tables and plots of bench/quality.py, from its results dict (nothing here computes a number)."""

from __future__ import annotations

from pathlib import Path

DOMAINS = ("law", "code")
BASES = ("small", "large")


def plots(r: dict, out: Path, stem: str) -> list[str]:
    """One figure: held-out perplexity against the weight of the second model, per domain x base."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(r["sweeps"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        sw = r["sweeps"][key]
        for label, curve in sw.items():
            if label != "grid":
                ax.plot(sw["grid"], curve, marker="o", ms=2.5, label=f"base + {label}")
        ax.set_yscale("log")
        ax.set_xlabel("weight w of the second model")
        ax.set_title(f"{key.replace('/', ', base-')}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out perplexity")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    name = f"{stem}_sweep.png"
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]


def _range(lat: dict, key: str) -> str:
    r = lat.get(f"{key}_ratio_range")
    return f", rounds {r[0]:.2f}–{r[1]:.2f}" if r else ""


def _ci(x) -> str:
    return f"[{x[0]:.2f}, {x[1]:.2f}]"


def _ratio(x) -> str:
    if not x:
        return ""
    return f"{x['ratio']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"


def _train_minutes(r: dict) -> float:
    return sum(x["wall_s"] for per_domain in r["runs"].values() for rows in per_domain.values() for x in rows) / 60


def _flops(x: float) -> str:
    return "" if not x else f"{x:.1e}"


def _edge(choice: dict) -> str:
    """How a learning rate was chosen, when it was not an interior point of a searched grid."""
    if "interior" not in choice:  # a record from before the grid grew past its edges
        return ""
    if len(choice["grid"]) == 1:
        return " (one rate: not searched)"
    added = f", grid extended by {', '.join(f'{x:g}' for x in choice['added'])}" if choice["added"] else ""
    return added and f" ({added[2:]})" if choice["interior"] else f" (at an edge{added})"


def _part(x: dict | None) -> str:
    return "" if not x or x["ppl"] is None else f"{x['ppl']:.2f} {_ci(x['ci95'])}"


def copy_table(rows: list[dict], *, with_base: bool) -> list[str]:
    """Held-out perplexity on copy positions (the 8-gram ending there occurs in training: retrieval
    wins these by construction) and on the others (where a memory has to generalise)."""
    rows = [x for x in rows if x.get("copy_split")]
    if not rows:
        return []
    counts = {(x.get("domain"), x["copy_split"]["copy"]["tokens"], x["copy_split"]["noncopy"]["tokens"]) for x in rows}
    head = ("| domain | base " if with_base else "") + "| method | copy positions | non-copy positions |"
    L = ["", "Copy vs non-copy held-out positions (" + "; ".join(f"{d + ': ' if d else ''}{c:,} copy, {nc:,} non-copy tokens"
                                                            for d, c, nc in sorted(counts, key=str)) + "; perplexity [95 % CI]):", "", head,
         "|" + "---|" * (head.count("|") - 1)]
    for x in rows:
        lead = f"| {x['domain']} | {x['base']} " if with_base else ""
        L.append(f"{lead}| {x['method']} | {_part(x['copy_split']['copy'])} | {_part(x['copy_split']['noncopy'])} |")
    return L


def markdown(r: dict) -> str:
    s = r["scale"]
    dev = r.get("device") or {}
    where = (f"CPU, {r['torch_threads']} torch threads" if dev.get("device", "cpu") == "cpu" else
             f"{dev['device']} (torch {dev['torch']}, transformers {dev['transformers']}, kNN search: {dev['search']}; "
             "tables rebuilt from its per-token log-probabilities)")
    L = ["# memreg quality benchmark v2" + ("" if r.get("scale_name", "cpu") in ("cpu", "quick") else f" — {r['scale_name']} scale"), "",
         f"`{r['command']}` — {where}. The first invocation that finished took "
         f"{r['full_run']['wall_s'] / 60:.1f} min (load average {r['full_run']['load_average_start']:.1f} at the start, "
         f"{r['full_run']['load_average_end']:.1f} at the end; 2 cores: above ~2 the wall times are inflated by other work); "
         + ("it started from an empty cache, so this is a cold run's time. " if r["full_run"].get("cold") else
            "it reuses whatever earlier interrupted invocations cached, so it is a lower bound for a cold run. ") +
         f"The trained rows alone recorded {_train_minutes(r):.0f} min of wall time. Reruns reuse the cache "
         f"(this one: {r['this_run_wall_s']:.0f} s, mostly the latency measurement).", "",
         f"Every trained row: memreg's training loop, blocks of {r['eval']['block']} tokens, micro-batch {r['eval']['batch']}, "
         f"AdamW, 5 % warm-up then linear decay to 0 at {s['max_epochs']:g} epochs, scored on the validation documents "
         f"twice an epoch, stopped after {s['patience']} evaluations without improvement, best checkpoint kept. "
         "Learning rates chosen on validation (grids below). Scoring: sliding windows "
         f"(context {r['eval']['context']}, stride {r['eval']['stride']}). Intervals: 95 % paired bootstrap over held-out "
         f"documents ({r['eval']['bootstrap']} resamples); a ratio below 1 means the row beats the reference.", "",
         "## Data", "", "| domain | train docs / tokens | validation docs / tokens (8-gram overlap) | held-out docs / tokens (8-gram overlap) | near-copies kept in train |",
         "|---|---|---|---|---|"]
    for d in DOMAINS:
        x = r["data"][d]
        L.append(f"| {d} | {x['train']['documents']} / {x['train']['tokens']:,} | {x['valid']['documents']} / "
                 f"{x['valid']['tokens']:,} ({x['valid']['8gram_overlap_with_train']:.1%}) | {x['test']['documents']} / "
                 f"{x['test']['tokens']:,} ({x['test']['8gram_overlap_with_train']:.1%}) | {x['near_duplicate_documents']} |")
    L += ["", f"Documents cut to {s['doc_max_tokens']} tokens; general text (forgetting): {r['general_tokens']:,} tokens of the "
          "bases' own held-out man/pydoc pages.", "", "## Teacher vs init (validation perplexity)", "",
          "| domain | base-large | teacher = base-large fine-tuned (DAPT-large) | init = base-small | teacher beats init |", "|---|---:|---:|---:|---|"]
    for d, t in r["teachers"].items():
        vals = list(t.values())
        L.append(f"| {d} | {vals[2]:.2f} | {vals[0]:.2f} | {vals[1]:.2f} | {'yes' if vals[3] else 'NO'} |")
    L += ["", "## Learning rates chosen on validation (validation perplexity of the model alone per rate)", ""]
    for d in DOMAINS:
        parts = [f"{m}: " + (", ".join(f"{lr} → {v:.2f}" for lr, v in c["grid"].items()) or c.get("note", "")) +
                 f" ⇒ **{c['chosen']:g}**" + _edge(c) for m, c in r["lr_choice"][d].items()]
        L.append(f"- {d}: " + "; ".join(parts))
    L += ["", "## Held-out perplexity per domain × base", "",
          "| domain | base | method | held-out ppl [95 % CI] | vs base | vs memory | w | valid ppl | build FLOPs | build s | infer FLOPs/tok | note |",
          "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for x in r["rows"]:
        w = "" if x["weight"] is None else f"{x['weight']:.2f}"
        v = "" if x["valid_ppl"] is None else f"{x['valid_ppl']:.2f}"
        L.append(f"| {x['domain']} | {x['base']} | {x['method']} | {x['test_ppl']:.2f} {_ci(x['ci95'])} | {_ratio(x['vs_base'])} | "
                 f"{_ratio(x['vs_memory'])} | {w} | {v} | {_flops(x['build_flops'])} | {x['build_wall_s']:.0f} | "
                 f"{_flops(x['infer_flops_per_token'])} | {x['note']} |")
    L += copy_table(r["rows"], with_base=True)
    L += ["", "Build FLOPs: memory and kNN-LM include the teacher's fine-tuning (6·P·tokens seen), the datastore "
          "(2·P_teacher·N) and, for the memory, the exact kNN search (2·N²·d) and its own training; LoRA (4·P + 6·P_lora)·tokens; "
          "DAPT 6·P·tokens. One memory serves both bases; LoRA and DAPT are trained per base. Learning-rate grids multiply "
          "every trained row's cost by the grid size (not counted). Inference FLOPs per token: 2·P per model run, kNN-LM adds "
          "the teacher's forward (keys) and 2·N·d for exact search.", "", "## Seeds (held-out perplexity, mean ± sd)", "",
          "| domain | model | seeds | alone | with base-small | with base-large |", "|---|---|---|---|---|---|"]
    for d in DOMAINS:
        for key, sd in r["seeds"][d].items():
            cells = " | ".join(f"{sd[f'{k}_mean_sd'][0]:.2f} ± {sd[f'{k}_mean_sd'][1]:.2f}" for k in ("alone", "with_small", "with_large"))
            L.append(f"| {d} | {key} | {', '.join(str(p['seed']) for p in sd['runs'])} | {cells} |")
    L += ["", "## Both memories composed (EM weights on both validation splits)", "",
          "| base | weights | law held-out: base → composed (single memory) | code held-out | general text |", "|---|---|---|---|---|"]
    for c in r["composed"]:
        ws = ", ".join(f"{k} {v:.2f}" for k, v in c["weights"].items())
        cells = " | ".join(f"{c[t]['base']:.2f} → {c[t]['composed']:.2f}" + (f" ({c[t]['single_memory']:.2f})" if "single_memory" in c[t] else "")
                           + f", ratio {_ratio(c[t]['vs_base'])}" for t in ("law-test", "code-test", "general"))
        L.append(f"| {c['base']} | {ws} | {cells} |")
    L += ["", "## Forgetting: general text, each model at its own domain's EM weight", "",
          "| base | domain | model | base | model alone | interpolated (w) | ratio vs base |", "|---|---|---|---:|---:|---|---|"]
    for g in r["forgetting"]:
        L.append(f"| {g['base']} | {g['domain']} | {g['model']} | {g['base_ppl']:.2f} | {g['alone_ppl']:.2f} | "
                 f"{g['interpolated_ppl']:.2f} ({g['weight']:.2f}) | {_ratio(g['vs_base'])} |")
    if r.get("real"):
        re = r["real"]
        L += ["", f"## Real model: {re['model']}, law", "",
              f"Training: {re['train_documents']} documents, {re['train_tokens']:,} SmolLM2 tokens; validation {re['valid_tokens']:,}, "
              f"held-out {re['test_tokens']:,} tokens ({re['test_documents']} documents). One learning rate per method (no grid); "
              "scored in windows of 256 tokens without overlap.", "",
              "| method | held-out ppl [95 % CI] | vs base | vs memory | w | alone | note |", "|---|---|---|---|---:|---:|---|"]
        for x in re["rows"]:
            w = "" if x.get("weight") is None else f"{x['weight']:.2f}"
            alone = f"{x['alone_ppl']:.1f}" if "alone_ppl" in x else ""
            L.append(f"| {x['method']} | {x['test_ppl']:.2f} {_ci(x['ci95'])} | {_ratio(x.get('vs_base'))} | "
                     f"{_ratio(x.get('vs_memory'))} | {w} | {alone} | {x.get('note', '')} |")
        L += copy_table(re["rows"], with_base=False)
    lat = r["latency"]
    L += ["", "## Inference latency (measured in this run)" if lat.get("device", "cpu") == "cpu"
          else f"## Inference latency (measured on {lat['device']})", "",
          f"{lat['tokens']} law tokens, sliding windows, "
          + (f"on {lat['device']}, " if lat.get("device", "cpu") != "cpu" else "")
          + f"{lat['threads']} threads, load average {lat['load_average']:.1f}, "
          f"median of {lat.get('rounds', 1)} interleaved rounds: base-large {lat['base_ms']:.2f} ms/token; "
          f"+ memory (memreg.compose) {lat['base_plus_memory_ms']:.2f} ({lat['base_plus_memory_ratio']:.2f}×{_range(lat, 'base_plus_memory')}; "
          f"FLOPs floor {lat.get('flops_floor', float('nan')):.2f}×); + kNN-LM (key forward + exact search) "
          f"{lat['base_plus_knnlm_ms']:.2f} ({lat['base_plus_knnlm_ratio']:.2f}×{_range(lat, 'base_plus_knnlm')}). The tables' mixtures equal memreg.compose's output "
          f"(max |Δ log p| {lat['compose_max_abs_diff']:.1e}).", "", "Plot: " + ", ".join(f"`{p}`" for p in r["plots"])]
    return "\n".join(L) + "\n"
