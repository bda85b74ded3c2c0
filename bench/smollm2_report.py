"""The SmolLM2 track's tables (bench/results/smollm2.md), from its results dict: nothing here computes a number."""

from __future__ import annotations

from family_report import _curve
from quality_report import _ci, _part, _ratio


def markdown(r: dict) -> str:
    s, d = r["scale"], r["data"]
    first = r.get("first_run")
    L = ["# SmolLM2 track: SmolLM2-135M-Instruct on law, the memory against its controls", "",
         f"Command: `{r['command']}` on {r['device']} (tables and scoring: {r['torch_threads']} torch thread(s); "
         "training runs: one process each, `--threads 1`, two at a time). "
         f"Corpus: {r['corpus']}; documents cut to {s['doc_max_tokens']} tokens, split by near-duplicate cluster: "
         f"training {d['train']['tokens']:,} tokens / {d['train']['documents']} documents, validation "
         f"{d['valid']['tokens']:,} / {d['valid']['documents']} (8-gram overlap with training "
         f"{d['valid']['8gram_overlap_with_train']:.1%}), held-out {r['held_out']['tokens']:,} / "
         f"{r['held_out']['documents']} (8-gram overlap {d['test']['8gram_overlap_with_train']:.1%}); "
         f"{r['copy_tokens']:,} held-out positions are copy positions (their 8-gram occurs in training).", "",
         f"Every trained row: `memreg train` (or, for LoRA, its trainer), lr {s['lr']:g} (the paper's rate; one rate, "
         f"not a grid), at most {s['max_epochs']:g} epochs (the schedule decays to 0 there), patience {s['patience']}"
         + (f", at most {s['max_minutes']:g} minutes" if s.get("max_minutes") else "")
         + ", batches of 4 x 256 tokens; memories and CE ablations selected on the mixture with SmolLM2 "
         "(`--select-on mixture`). Each row mixes SmolLM2 with one other model at the weight EM fits on validation "
         f"(the kNN-LM: its temperature too); intervals: paired bootstrap over held-out documents "
         f"({r['eval']['bootstrap']:,} resamples); windows of {r['eval']['context']} tokens without overlap.", "",
         "| method | held-out ppl [95 % CI] | vs SmolLM2 [95 % CI] | vs first memory row [95 % CI] | weight | alone | "
         "copy positions | non-copy positions |", "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        alone = f"{x['alone_ppl']:.4g}" if x.get("alone_ppl") is not None else ""
        weight = "" if x.get("weight") is None else f"{x['weight']:.3f}"
        vs_base = "" if x is r["rows"][0] else _ratio(x["vs_base"])
        L.append(f"| {x['method']}{' (' + x['note'] + ')' if x.get('note') else ''} | {x['test_ppl']:.2f} {_ci(x['ci95'])} | "
                 f"{vs_base} | {_ratio(x.get('vs_memory'))} | {weight} | {alone} | {_part(x['copy_split']['copy'])} | "
                 f"{_part(x['copy_split']['noncopy'])} |")
    L += ["", "### Memory vs its CE ablation (same init, rate, caps and selection; ratio of held-out perplexities, "
          "paired; below 1: the memory wins)", "", "| pair | all positions | copy | non-copy |", "|---|---|---|---|"]
    for pair, x in r["memory_vs_ce"].items():
        L.append(f"| {pair} | {_ratio(x['all'])} | {_ratio(x['copy'])} | {_ratio(x['noncopy'])} |")
    missing = [n for n in r["planned"] if n not in r["trained"]]
    if missing:
        L += ["", f"Planned but not run in this budget: {', '.join(missing)}."]
    L += ["", "### kNN targets of each work folder", "", "| folder | k | temperature | effective neighbours | effective tokens |",
          "|---|---|---|---|---|"]
    for key, x in r["knn_stats"].items():
        L.append(f"| {key} | {x['k']} | {x['temperature']} | {x['effective_neighbours']} | {x['effective_tokens']} |")
    t = r.get("target_diagnosis")
    if t:
        L += ["", f"### The KL target p_kNN (leave-one-out, k = {t['k']}), at temperatures around memreg's choice "
              f"T0 = {t['t0']:g} ({t['sample']:,} sampled training positions)", "",
              "| T / T0 | T | effective neighbours | effective tokens | mean p_kNN(true) | top-1 | leave-one-out ppl |",
              "|---|---|---|---|---|---|---|"]
        for g in t["grid"]:
            L.append(f"| {g['t_factor']:g} | {g['temperature']:g} | {g['effective_neighbours']:g} | {g['effective_tokens']:g} | "
                     f"{g['p_true_mean']:.3f} | {g['top1']:.3f} | {g['loo_ppl']:.4g} |")
        L += ["", "The stored targets (T0), by whether the position's 8-gram occurs elsewhere in training: "
              + "; ".join(f"{part} ({x['positions']:,} positions): mean p_kNN(true) {x['p_true_mean']:.3f}, top-1 "
                          f"{x['top1']:.3f}, leave-one-out ppl {x['loo_ppl']:.4g}" for part, x in t["stored_targets"].items())
              + "."]
    L += ["", "### Training runs", "", "| run | params | steps | best step | stop | wall s | validation ppl by step: alone / with SmolLM2 |",
          "|---|---|---|---|---|---|---|"]
    for name, x in r["runs"].items():
        L.append(f"| {name} | {x.get('params', 0):,} | {x['steps']} | {x.get('best_step')} | {x['stop_reason']} | "
                 f"{x['wall_s']:.0f} | {_curve(x)} |")
    read = [n for n, x in r["runs"].items() if x.get("read_from")]
    if read:
        L += ["", f"{', '.join(read)}: read from memreg train's train-stage folder (the trained weights the package "
              "gets, and the stage's learning curve) once the train stage had ended; the runs' own evaluation stage "
              "(teacher, init and memory on validation, for the card) was stopped to free the CPU, so no package was "
              "written. Wall s: the training loop (validation scoring included), from the stage's files."]
    costs = r["score_wall_s"]
    L += ["", "### Costs (wall seconds on the machine as it was: 2 cores shared with other agents' jobs, "
          "runs in up to two processes of one torch thread; not idle figures)", "",
          "Training (memreg train, every stage): " + ", ".join(f"{n} {x['wall_s']:.0f} s" for n, x in r["runs"].items()) + ".",
          *(["Stages of each memreg train run (0 s: cached by an earlier run): " + "; ".join(
              f"{n}: " + ", ".join(f"{k} {v:.0f}" for k, v in x.get("stage_wall_s", {}).items())
              for n, x in r["runs"].items() if x.get("stage_wall_s")) + "."]
            if any(x.get("stage_wall_s") for x in r["runs"].values()) else []),
          "Scoring (validation + held-out): " + ", ".join(f"{k} {v:.0f} s" for k, v in costs.items()) + "; kNN-LM "
          + ", ".join(f"{k} {v:.0f} s" for k, v in r["knn_search_s"].items()) + " (key model forward + exact search).",
          f"Load average when the tables were built: {r['load_average_now']:.1f}"
          + (f"; first full invocation {first['wall_s'] / 60:.1f} min" if first else "") + ".", ""]
    return "\n".join(L)
