"""`memreg attach`, `memreg eval`, `memreg tune`: thin commands over `memreg.compose`.

torch and transformers are imported inside the functions, so registering these commands costs
nothing to `memreg list`.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from memreg.cli import output
from memreg.cli.options import JsonOpt, QuietOpt, RegistryOpt, StorageOpt, storage_options, usage_error
from memreg.cli.output import console, err_console, print_json, warn
from memreg.cli.progress import count_progress, model_loading_bars
from memreg.cli.sign_cmds import PublicKeyOpt, TrustOpt

BaseArg = Annotated[str, typer.Argument(help="Base model: a Hugging Face model folder or id (with its tokenizer), or a .gguf file (converted once, see `memreg convert-gguf`).")]
MemoriesArg = Annotated[
    list[str],
    typer.Argument(help="Memories: registry references (law, law@1.2.0, law:stable) or package folders, each REF[=WEIGHT]."),
]
DataOpt = Annotated[list[Path], typer.Option("--data", help="Held-out text files or folders of them (repeatable); one document per file.")]
# refused before any model loads (usage error, exit 2): a window needs a token to condition on and one to score
ContextOpt = Annotated[Optional[int], typer.Option(min=2, help="Tokens each sliding window sees (at least 2). Default: the shortest context among the models, at most 1024.")]
StrideOpt = Annotated[Optional[int], typer.Option(min=1, help="Tokens each window advances (1 to context). Default: context / 2.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Compose even when a tokenizer check fails (experts only).")]


class Draft(str, Enum):
    """Where `attach --prompt` takes speculative drafts from (memreg.decode.assisted)."""

    memory = "memory"
    lookup = "lookup"
    none = "none"


DraftOpt = Annotated[Draft, typer.Option(
    "--draft", case_sensitive=False,
    help="Speculative decoding: 'memory' (the first memory drafts, the mixture verifies), 'lookup' (drafts copied "
         "from the text so far), 'none'. The text is the same (greedy) or sampled from the same mixture (--sample); "
         "only the speed differs. Not with --beams.")]
NoRouterOpt = Annotated[bool, typer.Option("--no-router", help="Mix with the fixed weights even where the memory ships a router (docs/router.md).")]
RouterPathOpt = Annotated[Optional[Path], typer.Option("--router", help="Mix with this router folder's per-token weights (refused if fitted for another base).")]


def _router(no_router: bool, path: Path | None) -> Any:
    """compose()'s router= from --no-router / --router FOLDER (default: the one a memory's package ships)."""
    if no_router and path is not None:
        raise usage_error("--no-router and --router FOLDER do not go together: give one")
    return None if no_router else (path if path is not None else "auto")


def _scores(model, texts: list[str], context: int | None, stride: int | None, *, bars: bool) -> tuple[list, Any]:
    """Each member's per-token log-probabilities, and the routed mixture's where a router is set (else None)."""
    if not model.routed:
        return _score(model, texts, context, stride, bars=bars), None
    from memreg.router.fitting import routed_log_probs

    with count_progress("scoring", unit="tokens", enabled=bars) as cb:
        return routed_log_probs(model, texts, **_window(model, context, stride), progress=cb)


def _compose(base: str, specs: list[str], registry: str | None, options: list[str] | None, force: bool, *,
             bars: bool, hint: str = "'MEMORIES'", **kw: Any):
    """The composed model; `hint` names the argument or option the specs came from in usage errors."""
    from memreg.compose import compose
    from memreg.core.errors import TokenizerMismatchError

    refs, weights = _memory_specs(specs, hint)
    model_loading_bars(downloads=bars)  # a base from the Hub shows its download; local weights load silently
    reg = None
    if any(not Path(r).expanduser().is_dir() for r in refs):  # a registry is opened only when needed
        from memreg.registry import Registry

        reg = Registry.open(registry, storage_options=storage_options(options))
    try:
        model = compose(base, refs, weights, registry=reg, force=force, **kw)
    except TokenizerMismatchError as e:  # the SDK's message names its argument; the user has an option
        raise TokenizerMismatchError(str(e).replace("force=True", "--force")) from None
    _refuse_duplicates(refs, model.names, hint)
    return model


def _memory_specs(specs: list[str], hint: str) -> tuple[list[str], list[float | None]]:
    """REF[=WEIGHT] as typed. A weight that is not a number in [0, 1], or weights that add up past 1,
    are usage errors (exit 2), refused before any model loads."""
    from memreg.compose import parse_memory_spec
    from memreg.mixture import check_weights

    try:
        pairs = [parse_memory_spec(s) for s in specs]
        check_weights([w for _, w in pairs if w is not None])
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=hint) from None
    return [r for r, _ in pairs], [w for _, w in pairs]


def _refuse_duplicates(refs: list[str], names: list[str], hint: str) -> None:
    """Two specs that are one memory (law:stable and law@1.0.0, or law twice) would report one weight
    under one name and lose the other: refused, as the user surely meant one memory or two others."""
    first: dict[str, str] = {}
    for ref, name in zip(refs, names):
        if name in first:
            both = f"{ref} is given twice" if first[name] == ref else f"{first[name]} and {ref} are the same memory ({name})"
            raise typer.BadParameter(f"{both}: give each memory once, with one weight", param_hint=hint)
        first[name] = ref


def _read_texts(paths: list[Path]) -> list[str]:
    """One document per file; a folder stands for the files directly in it, in name order."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} is not a file or folder: --data/--eval take text files or folders of them")
    from memreg.train.corpus import read_text_file  # the same check `memreg train` skips files by

    texts, skipped = [], []
    for f in files:
        text, why = read_text_file(f)
        if text is None:
            skipped.append(f"{f} ({why})")
        else:
            texts.append(text)
    if skipped:
        warn(f"skipped {len(skipped)} file(s) that are not UTF-8 text: {', '.join(skipped[:5])}"
             + (", …" if len(skipped) > 5 else ""))
    if not texts:
        raise FileNotFoundError(f"no text files in {', '.join(map(str, paths))}"
                                + (f" ({len(skipped)} skipped as binary or not UTF-8)" if skipped else ""))
    return texts


def _ppl(lp) -> float:
    from memreg.evaluate import perplexity

    return perplexity(lp)


def _window(model, context: int | None, stride: int | None) -> dict[str, int]:
    """Sliding-window sizes: a window never exceeds what every member's position table holds
    (default: that, at most 1024); a longer --context is a usage error, before any scoring."""
    from memreg.compose import ContextTooLongError
    from memreg.compose.scoring import window

    try:
        context, stride = window(model, context, stride)
    except ContextTooLongError as e:
        raise typer.BadParameter(str(e), param_hint="'--context'") from None
    return {"context": context, "stride": stride}


def _score(model, texts: list[str], context: int | None, stride: int | None, *, bars: bool) -> list:
    """Each member's per-token log-probabilities of `texts`, with a bar of tokens scored (all members)."""
    from memreg.compose import member_target_log_probs

    with count_progress("scoring", unit="tokens", enabled=bars) as cb:
        return member_target_log_probs(model, texts, **_window(model, context, stride), progress=cb)


def _weights_str(names: list[str], weights: list[float]) -> str:
    return ", ".join(f"{n}={w:.3g}" for n, w in zip(names, weights))


def attach(
    base: BaseArg,
    memories: MemoriesArg,
    prompt: Annotated[Optional[str], typer.Option(help="Text to continue; the output streams as it is generated.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 50,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (> 0).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: keep the smallest set with this much probability.")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option(min=1, help="Sample among the k most likely tokens.")] = None,
    beams: Annotated[int, typer.Option(min=1, help="Beam search with N beams (printed at the end); not with --sample.")] = 1,
    seed: Annotated[Optional[int], typer.Option(help="Random seed for --sample.")] = None,
    draft: DraftOpt = Draft.none,
    eval_files: Annotated[Optional[list[Path]], typer.Option("--eval", help="Text files: print perplexity of the base alone and composed.")] = None,
    context: ContextOpt = None,
    stride: StrideOpt = None,
    force: ForceOpt = False,
    no_router: NoRouterOpt = False,
    router: RouterPathOpt = None,
    trust: TrustOpt = None,
    public_key: PublicKeyOpt = None,
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Attach memories to a base model: generate from --prompt, or compare perplexity with --eval."""
    output.start("attach", json_mode=json_)  # warnings into the envelope, also when called in-process
    if prompt is None and not eval_files:
        raise usage_error("nothing to do: give --prompt TEXT to generate or --eval FILES to score")
    _check_decoding(sample, temperature, top_p, beams)
    if draft is not Draft.none and beams > 1:
        raise usage_error(f"--draft {draft.value} and --beams {beams} do not go together: drafting decodes one "
                          "sequence; give --draft none for beam search")
    bars = not (json_ or quiet)
    model = _compose(base, memories, registry, storage_option, force, bars=bars, trust=trust, public_keys=public_key or [],
                     router=_router(no_router, router))
    result: dict = {"router": True} if model.routed else {}  # under --json, one envelope holds eval and generation
    if eval_files:
        from memreg.evaluate import mixture_log_probs

        lps, routed = _scores(model, _read_texts(eval_files), context, stride, bars=bars)
        row = {
            "tokens": int(lps[0].size),
            "weights": dict(zip(model.names, model.weights)),
            "perplexity_base": _ppl(lps[0]),
            "perplexity_composed": _ppl(mixture_log_probs(lps[0], lps[1:], model.member_weights)),
        }
        if routed is not None:
            row["perplexity_router"] = _ppl(routed)
        result.update(row)
        if not json_:
            console.print(f"base alone: perplexity {row['perplexity_base']:.2f}")
            console.print(f"composed ({_weights_str(model.names, model.weights)}): "
                          f"perplexity {row['perplexity_composed']:.2f}  ({row['tokens']} tokens)")
            if routed is not None:
                console.print(f"composed with the router: perplexity {row['perplexity_router']:.2f}")
    if prompt is not None:
        result.update(_generate(model, prompt, max_new_tokens, sample, temperature, top_p, top_k, beams, seed, json_,
                                draft))
    if json_:
        print_json(result)


def _check_decoding(sample: bool, temperature: float, top_p: float, beams: int) -> None:
    """Decoding options that cannot work together: usage errors before any model loads."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise typer.BadParameter(f"{temperature:g} is not a temperature: give a number > 0 (it only matters with --sample)",
                                 param_hint="'--temperature'")
    if not 0 < top_p <= 1:
        raise typer.BadParameter(f"{top_p:g} is not a probability in (0, 1]", param_hint="'--top-p'")
    if sample and beams > 1:
        raise usage_error(f"--sample and --beams {beams} do not go together: beam search keeps the likeliest beams, "
                          "it does not sample; give one of them")


def _streamer(tok):
    """transformers' TextStreamer, printing the text as characters (output.clean): byte-level models
    can emit any byte, ESC included, and a memory comes from a registry."""
    from transformers import TextStreamer

    class CleanStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            super().on_finalized_text(output.clean(text), stream_end)

    return CleanStreamer(tok, skip_prompt=False, skip_special_tokens=True)


def _draft_options(model, draft: Draft) -> dict[str, Any]:
    """generate() keywords of a --draft choice (the first memory drafts: memreg.decode.assisted)."""
    if draft is Draft.memory:
        return {"assistant_model": model.names[0], "return_dict_in_generate": True}
    if draft is Draft.lookup:
        return {"prompt_lookup_num_tokens": 10, "return_dict_in_generate": True}
    return {}


def _generate(model, prompt, max_new_tokens, sample, temperature, top_p, top_k, beams, seed, json_,
              draft: Draft = Draft.none) -> dict:
    import torch

    tok = model.tokenizer
    enc = tok([prompt], return_tensors="pt")
    if seed is not None:
        torch.manual_seed(seed)
    stream = beams == 1 and not json_
    out = model.generate(
        enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=max_new_tokens, do_sample=sample,
        temperature=temperature, top_p=top_p, top_k=top_k or 0, num_beams=beams,  # top_k 0: no top-k cut
        streamer=_streamer(tok) if stream else None, **_draft_options(model, draft),
    )
    stats = getattr(out, "extra", None)  # drafted / accepted / rounds when drafting
    ids = out.sequences if stats is not None else out
    text = tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    if not json_ and not stream:
        console.print(prompt + text, markup=False)
    result = {"prompt": prompt, "completion": text, "weights": dict(zip(model.names, model.weights))}
    if stats is not None:
        result["draft"] = {"source": draft.value, **stats}
    return result


def eval_cmd(
    base: BaseArg,
    data: DataOpt,
    memory: Annotated[Optional[list[str]], typer.Option("--memory", "-m", help="Memory REF[=WEIGHT], repeatable.")] = None,
    context: ContextOpt = None,
    stride: StrideOpt = None,
    sweep: Annotated[bool, typer.Option("--sweep", help="Perplexity at weights 0, 0.05, …, 1 of each memory alone.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="With --sweep: write perplexity against weight to this image.")] = None,
    fit: Annotated[bool, typer.Option("--fit-weights", help="Fit the memory weights by EM and report them.")] = False,
    force: ForceOpt = False,
    no_router: NoRouterOpt = False,
    router: RouterPathOpt = None,
    trust: TrustOpt = None,
    public_key: PublicKeyOpt = None,
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Held-out perplexity of a base, alone and with memories (sliding window)."""
    output.start("eval", json_mode=json_)  # warnings into the envelope, also when called in-process
    from memreg.compose import fit_weights
    from memreg.evaluate import mixture_log_probs, weight_sweep

    memory = memory or []
    if plot is not None and not sweep:
        raise ValueError("--plot draws the weight sweep: add --sweep")
    if plot is not None:
        _pyplot()  # a missing plot extra fails now, not after the whole sweep is scored
    # weights left out are taken from manifests; with --sweep/--fit-weights they need not exist
    specs = memory if not (sweep or fit) else [s if "=" in s else f"{s}=0" for s in memory]
    bars = not (json_ or quiet)
    model = _compose(base, specs, registry, storage_option, force, bars=bars, hint="'--memory'", trust=trust,
                     public_keys=public_key or [], router=_router(no_router, router))
    lps, routed = _scores(model, _read_texts(data), context, stride, bars=bars)
    base_lp, mem_lps = lps[0], lps[1:]
    result: dict[str, Any] = {"tokens": int(base_lp.size), "perplexity_base": _ppl(base_lp)}
    if routed is not None:
        result["perplexity_router"] = _ppl(routed)
    if memory and not (sweep or fit) or any("=" in s for s in memory):
        result["weights"] = dict(zip(model.names, model.weights))
        result["perplexity_composed"] = _ppl(mixture_log_probs(base_lp, mem_lps, model.member_weights))
    if fit and memory:
        fitted = fit_weights(lps)
        named = model.per_memory(fitted.weights)
        result["fitted_weights"] = dict(zip(model.names, named))
        result["perplexity_fitted"] = fitted.perplexity
    if sweep and memory:
        distinct = [model.names[model.member_of_memory.index(j)] for j in range(1, len(model.members))]
        result["sweep"] = {name: weight_sweep(base_lp, lp) for name, lp in zip(distinct, mem_lps)}
        if plot is not None:
            _plot(result["sweep"], result["perplexity_base"], plot)
            result["plot"] = str(plot)
    if json_:
        print_json(result)
        return
    _print_eval(result)


def _print_eval(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("model", "weights", "perplexity")
    table.add_row("base alone", "-", f"{result['perplexity_base']:.2f}")
    if "perplexity_composed" in result:
        table.add_row("composed", _fmt(result["weights"]), f"{result['perplexity_composed']:.2f}")
    if "perplexity_fitted" in result:
        table.add_row("fitted (EM)", _fmt(result["fitted_weights"]), f"{result['perplexity_fitted']:.2f}")
    if "perplexity_router" in result:
        table.add_row("router", "per token", f"{result['perplexity_router']:.2f}")
    for name, curve in result.get("sweep", {}).items():
        best = min(curve, key=curve.get)
        table.add_row(f"sweep {name}: best", f"{name}={best:.2f}", f"{curve[best]:.2f}")
    console.print(table)
    console.print(f"{result['tokens']} tokens scored" + (f"; plot written to {result['plot']}" if "plot" in result else ""))


def _fmt(weights: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in weights.items())


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib, which memreg's plot extra installs: pip install 'memreg[plot]'") from None
    return plt


def _plot(sweeps: dict[str, dict[float, float]], base_ppl: float, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in sweeps.items():
        ax.plot(list(curve), list(curve.values()), marker="o", ms=3, label=name)
    ax.axhline(base_ppl, color="grey", ls="--", lw=1, label="base alone")
    ax.set_xlabel("memory weight")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def tune(
    base: BaseArg,
    memories: MemoriesArg,
    data: DataOpt,
    context: ContextOpt = None,
    stride: StrideOpt = None,
    force: ForceOpt = False,
    write: Annotated[Optional[str], typer.Option("--write", metavar="VERSION", help="Publish the memory again as VERSION (same weights, no re-upload) with the fitted weight as its recommended weight; one memory only.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="With --write: also point these tags at the new version, repeatable.")] = None,
    fit_router: Annotated[bool, typer.Option("--router", help="Also fit a per-token router (docs/router.md); --write ships it in the package.")] = False,
    held_out: Annotated[Optional[list[Path]], typer.Option("--held-out", help="With --router: text to measure it on (default: the last 20% of --data's tokens, never fitted on).")] = None,
    features: Annotated[str, typer.Option(help="With --router: what it reads, comma-separated: entropy, top1, agreement, hidden.")] = "entropy,top1,agreement",
    threshold: Annotated[Optional[float], typer.Option(min=0, max=0.999, help="With --router: a token whose memories' weight is below this goes to the base alone.")] = None,
    router_out: Annotated[Optional[Path], typer.Option("--router-out", help="With --router: write the router (router_config.json, router.safetensors) to this folder.")] = None,
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit the memory weights by EM on held-out text and print them; --write VERSION publishes a new
    version of the memory whose manifest recommends the fitted weight."""
    output.start("tune", json_mode=json_)  # warnings into the envelope, also when called in-process
    from memreg.compose import fit_weights

    if write is not None:
        from memreg.registry.refs import check_version

        if len(memories) != 1:
            raise ValueError(f"--write publishes one memory's fitted weight; {len(memories)} memories were given: tune them one at a time")
        check_version(write)
    if (held_out or router_out or threshold is not None) and not fit_router:
        raise usage_error("--held-out, --threshold and --router-out go with --router")
    specs = [s if "=" in s else f"{s}=0" for s in memories]  # the weights are what we fit
    bars = not (json_ or quiet)
    model = _compose(base, specs, registry, storage_option, force, bars=bars, router=None)
    with count_progress("scoring", unit="tokens", enabled=bars) as cb:
        fitted = fit_weights(model, _read_texts(data), **_window(model, context, stride), progress=cb)
    result = {
        "weights": dict(zip(model.names, fitted.weights)),
        "base_weight": fitted.base_weight,
        "perplexity_base": fitted.base_perplexity,
        "perplexity_fitted": fitted.perplexity,
        "tokens": fitted.tokens,
        "iterations": fitted.iterations,
        "converged": fitted.converged,
    }
    routed = None
    if fit_router:
        from memreg.router.fitting import fit_router as fit
        from memreg.router.io import save_router

        with count_progress("router", unit="tokens", enabled=bars) as cb:
            routed = fit(model, _read_texts(data), held_out=_read_texts(held_out) if held_out else None, base_name=base,
                         features=[f.strip() for f in features.split(",") if f.strip()], threshold=threshold,
                         dataset="memreg tune --router: " + ", ".join(str(f) for f in data), progress=cb,
                         **_window(model, context, stride))
        result["router"] = {"features": list(routed.config.features), "held_out_tokens": int(routed.held_out_router.size),
                            "perplexity_fixed": routed.perplexity_fixed, "perplexity_router": routed.perplexity_router,
                            "gain": routed.gain}
        if router_out is not None:
            result["router"]["written"] = str(save_router(routed.router, router_out).parent)
    if write is not None:
        result["written"] = _write_version(write, memories[0], base, data, fitted, tag or [], registry, storage_option,
                                           routed)
    if json_:
        print_json(result)
        return
    _print_tune(result)


def _print_tune(result: dict[str, Any]) -> None:
    if "written" in result:
        w = result["written"]
        console.print(f"published {w['ref']} to {w['registry']} with recommended weight {w['recommended_weight']:.4f} "
                      f"({w['uploaded']} blobs uploaded, {w['skipped']} already there)")
    for name, w in result["weights"].items():
        console.print(f"{name}\t{w:.4f}")
    console.print(
        f"base gets {result['base_weight']:.4f}; perplexity {result['perplexity_base']:.2f} -> "
        f"{result['perplexity_fitted']:.2f} on {result['tokens']} tokens"
        + ("" if result["converged"] else f" (EM stopped after {result['iterations']} iterations before converging)")
    )
    if "router" in result:
        r = result["router"]
        console.print(f"router ({', '.join(r['features'])}): held-out perplexity {r['perplexity_fixed']:.2f} at the fixed "
                      f"weights -> {r['perplexity_router']:.2f} routed ({r['gain']:.3f}x, {r['held_out_tokens']} tokens)"
                      + (f"; written to {r['written']}" if "written" in r else ""))
    if not math.isfinite(result["perplexity_fitted"]):
        err_console.print("warning: a member gives probability 0 to some held-out token")


def _write_version(version: str, spec: str, base: str, data: list[Path], fitted, tags: list[str],
                   registry: str | None, options: list[str] | None, router=None) -> dict[str, Any]:
    from memreg.registry import Registry
    from memreg.tune import publish_tuned

    reg = Registry.open(registry, storage_options=storage_options(options))
    res = publish_tuned(reg, spec, version, fitted, base=base, tags=tags,
                        dataset="memreg tune (EM fit): " + ", ".join(str(f) for f in data), router=router)
    return {"ref": res.manifest.ref, "registry": reg.url, "recommended_weight": float(fitted.weights[0]),
            "created": res.created, "uploaded": res.uploaded, "skipped": res.skipped, "tags": sorted(res.tags)}
