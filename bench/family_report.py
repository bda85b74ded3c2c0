"""The family track's tables (bench/results/family.md), from its results dict: nothing here computes a number."""

from __future__ import annotations

from quality_report import _ci, _part, _ratio


def _curve(run: dict) -> str:
    """Validation perplexity at each evaluation, step: the model alone / mixed with the teacher at its best weight."""
    return ", ".join(f"{p['step']}: {p['val_perplexity']:.4g}"
                     + (f" / {p['val_perplexity_with_base']:.4g}" if p.get("val_perplexity_with_base") else "")
                     for p in run.get("curve") or [])


def base_table(b: str, block: dict) -> list[str]:
    L = [f"### Base Qwen2.5-Coder-{b.upper()}", "",
         "| method | held-out ppl [95 % CI] | vs base [95 % CI] | vs memory [95 % CI] | weight | alone | "
         "copy positions | non-copy positions |", "|---|---|---|---|---|---|---|---|"]
    for x in block["rows"]:
        alone = f"{x['alone_ppl']:.4g}" if x.get("alone_ppl") is not None else ""
        weight = "" if x.get("weight") is None else f"{x['weight']:.3f}"
        vs_base = "" if x is block["rows"][0] else _ratio(x["vs_base"])
        L.append(f"| {x['method']}{' (' + x['note'] + ')' if x.get('note') else ''} | {x['test_ppl']:.2f} {_ci(x['ci95'])} | "
                 f"{vs_base} | {_ratio(x.get('vs_memory'))} | {weight} | {alone} | {_part(x['copy_split']['copy'])} | "
                 f"{_part(x['copy_split']['noncopy'])} |")
    L += ["", f"Memory vs CE ablation (ratio of held-out perplexities, paired): {_ratio(block['memory_vs_ce'])}."]
    if len(block["seeds"]["memory"]) > 1:
        L.append("Per seed (interpolated held-out ppl): " + "; ".join(f"{k}: {', '.join(f'{v:.2f}' for v in vs)}"
                                                                     for k, vs in block["seeds"].items()) + ".")
    return L + [""]


def markdown(r: dict) -> str:
    s, d = r["scale"], r["data"]
    mem = r["runs"]["memory"][0]
    first = r["first_run"]
    L = ["# Family track: one memory, two bases (Qwen2.5-Coder 0.5B and 1.5B, Python documentation)", "",
         f"Command: `{r['command']}` on {r['device']} ({r['torch_threads']} torch thread(s)). Corpus: {r['corpus']}; "
         f"documents cut to {s['doc_max_tokens']} tokens, split by near-duplicate cluster: training "
         f"{d['train']['tokens']:,} tokens / {d['train']['documents']} documents, validation {d['valid']['tokens']:,} / "
         f"{d['valid']['documents']}, held-out split {d['test']['tokens']:,} / {d['test']['documents']} (8-gram overlap with "
         f"training {d['test']['8gram_overlap_with_train']:.1%}), of which "
         + ("all are scored" if r["held_out"]["of_split"] == "all" else
            f"the first {r['held_out']['documents']} documents ({r['held_out']['tokens']:,} tokens) are scored")
         + f"; {r['copy_tokens']:,} of their positions are copy positions.", "",
         f"One memory (`memreg train`, beta 0.5): teacher Qwen2.5-Coder-0.5B, init its first "
         f"{s['init_layers'] or 'all'} blocks (+ embeddings, final norm, LM head; {mem['params']:,} parameters), lr "
         f"{s['lr']:g} (one rate, not searched), at most {s['max_epochs']:g} epochs, patience {s['patience']}"
         + (f", at most {s['max_minutes']:g} minutes" if s.get("max_minutes") else "")
         + f", selected on the memory's own validation loss (memreg train's default); k = {mem['k']}, "
         f"{mem['datastore_size']:,} datastore keys. The CE ablation: the same init, rate and caps with beta 0. "
         "Each row mixes the base with one other model at the weight EM fits on the validation text for that base "
         "(the kNN-LM: temperature too); intervals: paired bootstrap over held-out documents "
         f"({r['eval']['bootstrap']:,} resamples); windows of {r['eval']['context']} tokens without overlap.", ""]
    for b, block in r["bases"].items():
        L += base_table(b, block)
    L += ["### Training runs", "", "| run | steps | best step | stop | wall s | validation ppl by step: alone / with the 0.5B |",
          "|---|---|---|---|---|---|"]
    for key, runs in r["runs"].items():
        for x in runs:
            L.append(f"| {x['name']} | {x['steps']} | {x.get('best_step')} | {x['stop_reason']} | {x['wall_s']:.0f} | {_curve(x)} |")
    costs = r["score_wall_s"]
    total = (sum(x["wall_s"] for runs in r["runs"].values() for x in runs) + sum(costs.values()))
    L += ["", "### Costs (wall seconds on the machine as it was: 2 cores shared with other jobs; not idle figures)", "",
          (f"Sum of the measured stages (training runs, scoring, kNN-LM): {total / 60:.0f} min; run as three processes "
           "sharing the cache (the bases, then the memory and the kNN-LM, scored by --bases-only / --memory-only "
           "processes while the ablation trained), so the wall time was shorter than the sum."
           if r.get("parallel_scoring") else
           f"Whole track, first run: {first['wall_s'] / 60:.1f} min (load average {first['load_average_start']:.1f} at "
           f"start, {first['load_average_end']:.1f} at the end)."),
          "Getting the models (fetch + size/sha256 check + GGUF conversion to float32): "
          + (", ".join(f"{b}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for b, c in r["model_costs"].items())
             or "done before this run") + ".",
          "memreg train stages (memory run; 0 s: cached by an earlier invocation): "
          + ", ".join(f"{k} {v:.0f} s" for k, v in mem.get("stage_wall_s", {}).items()) + ".",
          "Scoring (validation + held-out): " + ", ".join(f"{k} {v:.0f} s" for k, v in costs.items()) + "; kNN-LM "
          + ", ".join(f"{k} {v:.0f} s" for k, v in r["knn_search_s"].items()) + " (key model forward + exact search).", ""]
    if not s.get("lora"):
        L += ["LoRA r = 16 is not in this table: at this scale its backward passes through the 0.5B and the 1.5B "
              "do not fit the CPU budget; bench/gpu_family.sh runs it on both bases.", ""]
    return "\n".join(L)
