"""Which checkpoint should `memreg train` package: the one best on the memory's own validation loss
(`--select-on memory`) or the one best on base + memory at its best weight (`--select-on mixture`)?
Answered from learning curves already recorded, without training anything.

Every memreg training recorded in bench/results/quality.json (toy law/code tracks: the memory at
beta 0.5 for 3 seeds, beta 1 and beta 0 = DAPT-small; the SmolLM2 track: the memory and the CE
control) and in bench/results/lr_choice.json (the quickstart's early-stopped run per domain; its
fixed-length runs recorded the memory alone, so they are left out) holds, at each evaluation, the memory's validation loss
and the validation perplexity of base + memory at the best weight of the grid. The recorded runs were
stopped on the memory's loss. Each criterion is replayed through memreg's own `EarlyStopping` (same
patience and min_delta); printed per run: the step each would package and the validation mixture
perplexity there. Where the recorded run stopped on patience while the mixture was still improving,
a mixture-judged run would have trained on: its pick is then the best of the recorded part (a bound:
the real run could only be better or equal) and the row says "censored".

    python bench/select_criterion.py        # seconds; writes bench/results/select_criterion.json
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from memreg.train.stopping import CRITERIA, EarlyStopping

RESULTS = Path(__file__).resolve().parent / "results"


def recorded_runs() -> list[dict]:
    """(name, curve, patience, stop reason) of every recorded memreg training with both curves."""
    quality = json.loads((RESULTS / "quality.json").read_text())
    patience = quality["scale"]["patience"]
    runs = []
    for domain, methods in quality["runs"].items():
        for method in ("memory", "memory-kl", "dapt-small"):
            for r in methods.get(method, []):
                runs.append({"name": f"toy {r['name']}", "curve": r["curve"], "patience": patience,
                             "stop_reason": r["stop_reason"], "best_step": r["best_step"], "primary": method == "memory"})
    for method in ("memory", "ce-init"):
        r = quality["real"]["runs"][method]
        runs.append({"name": f"SmolLM2 {method}", "curve": r["curve"], "patience": patience,
                     "stop_reason": r["stop_reason"], "best_step": r["best_step"], "primary": method == "memory"})
    lr_choice = json.loads((RESULTS / "lr_choice.json").read_text())
    for domain, d in lr_choice.items():
        r = d["default_run"]  # the quickstart: memreg train's defaults (patience 3) at lr 1e-3
        runs.append({"name": f"quickstart {domain} lr{r['lr']:g}", "curve": r["curve"], "patience": 3,
                     "stop_reason": None, "best_step": None, "primary": True})
    return runs


def replay(curve: list[dict], criterion: str, patience: int | None) -> tuple[EarlyStopping, bool]:
    """EarlyStopping fed the recorded points under `criterion`; True when it stopped inside the curve."""
    es = EarlyStopping(patience, monitor=CRITERIA[criterion])
    for p in curve:
        es.record(p["step"], {**p, "val_loss_with_base": math.log(p["val_perplexity_with_base"])})
        if es.should_stop:
            return es, True
    return es, False


def compare(run: dict) -> dict:
    curve = {p["step"]: p for p in run["curve"]}
    mem, mem_stopped = replay(run["curve"], "memory", run["patience"])
    mix, mix_stopped = replay(run["curve"], "mixture", run["patience"])
    at_mem, at_mix = curve[mem.best_step], curve[mix.best_step]
    # the recorded run stopped on patience (memory); a mixture-judged run still improving would go on
    censored = run["patience"] is not None and mem_stopped and not mix_stopped
    return {
        "run": run["name"], "primary": run["primary"], "evaluations": len(run["curve"]),
        "last_step": run["curve"][-1]["step"], "recorded_stop": run["stop_reason"],
        "recorded_best_step": run["best_step"],
        "memory_pick": {"step": mem.best_step, "mixture_ppl": at_mem["val_perplexity_with_base"],
                        "memory_ppl": at_mem["val_perplexity"], "weight": at_mem["val_weight"]},
        "mixture_pick": {"step": mix.best_step, "mixture_ppl": at_mix["val_perplexity_with_base"],
                         "memory_ppl": at_mix["val_perplexity"], "weight": at_mix["val_weight"], "censored": censored},
        "differ": mem.best_step != mix.best_step,
        "mixture_ppl_change": at_mix["val_perplexity_with_base"] / at_mem["val_perplexity_with_base"] - 1,
        "memory_ppl_change": at_mix["val_perplexity"] / at_mem["val_perplexity"] - 1,
    }


def main() -> None:
    rows = [compare(r) for r in recorded_runs()]
    for r in rows:  # the memory replay must reproduce what the recorded runs packaged
        if r["recorded_best_step"] is not None:
            assert r["memory_pick"]["step"] == r["recorded_best_step"], r
    print(f"{'run':<40} {'evals':>5}  {'memory: step  mix ppl':>22}  {'mixture: step  mix ppl':>23}  {'mix':>7} {'mem alone':>9}")
    for r in rows:
        m, x = r["memory_pick"], r["mixture_pick"]
        print(f"{r['run']:<40} {r['evaluations']:>5}  {m['step']:>12} {m['mixture_ppl']:>9.3f}  {x['step']:>13} "
              f"{x['mixture_ppl']:>9.3f}  {100 * r['mixture_ppl_change']:>+6.2f}% {100 * r['memory_ppl_change']:>+8.2f}%"
              f"{'  censored' if x['censored'] else ''}")
    summary = {}
    for label, subset in (("primary", [r for r in rows if r["primary"]]), ("all", rows)):
        diff = [r for r in subset if r["differ"]]
        summary[label] = {"runs": len(subset), "picks_differ": len(diff),
                          "mixture_pick_better": sum(r["mixture_ppl_change"] < 0 for r in diff),
                          "mixture_pick_worse": sum(r["mixture_ppl_change"] > 0 for r in diff),
                          "censored": sum(r["mixture_pick"]["censored"] for r in subset),
                          "largest_gain": min((r["mixture_ppl_change"] for r in subset), default=0.0)}
        s = summary[label]
        print(f"{label}: picks differ in {s['picks_differ']} of {s['runs']} runs; the mixture's pick has the lower "
              f"validation mixture perplexity in {s['mixture_pick_better']} of them (worse in {s['mixture_pick_worse']}), "
              f"largest gain {100 * s['largest_gain']:.2f}%; {s['censored']} censored (would have trained on)")
    out = RESULTS / "select_criterion.json"
    out.write_text(json.dumps({"command": "python bench/select_criterion.py", "rows": rows, "summary": summary},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
