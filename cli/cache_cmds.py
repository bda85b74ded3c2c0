"""`memreg cache ls | clean | verify`: the local cache of pulled packages ($MEMREG_HOME/cache).

Thin: the work is in memreg.registry.cache. None of them imports torch or transformers.
"""

from __future__ import annotations

import typer

from memreg.cli.options import JsonOpt
from memreg.cli.output import console, print_json, styled

app = typer.Typer(name="cache", help="The local cache of pulled packages ($MEMREG_HOME/cache).",
                  no_args_is_help=True)


def _cache():
    from memreg.registry.cache import Cache

    return Cache()


def _human(n: float) -> str:
    from memreg.cli.registry_cmds import _human as human

    return human(n)


@app.command("ls")
def ls(json_: JsonOpt = False) -> None:
    """List cached packages (name, version, size, folder) and the blobs behind them."""
    cache = _cache()
    pkgs, blobs = cache.packages(), cache.blobs()
    blob_bytes = sum(b.stat().st_size for b in blobs)
    if json_:
        print_json({"cache": str(cache.root), "blobs": len(blobs), "blob_bytes": blob_bytes,
                    "packages": [{"name": p.name, "version": p.version, "size": p.size, "path": str(p.folder)}
                                 for p in pkgs]})
        return
    for p in pkgs:
        console.print(f"{p.name}@{p.version}  {_human(p.size)}  {p.folder}")
    console.print(f"{len(pkgs)} packages, {len(blobs)} blobs ({_human(blob_bytes)}) in {cache.root}")


@app.command("clean")
def clean(json_: JsonOpt = False) -> None:
    """Remove every cached package and blob (the next pull downloads again); leftovers of killed
    pulls go too, but never the temp files of a pull still running."""
    cache = _cache()
    freed = cache.clean()
    if json_:
        print_json({"cache": str(cache.root), "freed_bytes": freed})
    else:
        console.print(f"removed {_human(freed)} from {cache.root}")


@app.command("verify")
def verify(json_: JsonOpt = False) -> None:
    """Re-hash every cached blob and package file; remove what changed (the next pull fetches it
    again). Exit 1 if anything was wrong."""
    cache = _cache()
    problems = cache.verify()
    if json_:
        print_json({"cache": str(cache.root), "ok": not problems, "problems": problems})
    else:
        for p in problems:
            console.print(styled("FAIL", "red"), p)
        console.print(f"{'ok' if not problems else 'FAILED'}: {len(cache.blobs())} blobs, "
                      f"{len(cache.packages())} packages checked in {cache.root}")
    if problems:
        raise typer.Exit(1)
