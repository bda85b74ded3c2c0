"""memreg quickstart: train a memory decoder on a domain, publish it, attach it to two base models.

    python examples/quickstart.py                  # law, ~6 minutes on 2 CPU cores
    python examples/quickstart.py --domain code    # Python standard-library sources

Everything runs on what this machine ships: the law corpus is Debian's licence texts and the
copyright files of installed packages, the code corpus Python's standard library (examples/domains.py;
documents with a near-copy on the other side are never held out). The two base models are the ones
in models/ (GPT-2 shaped, 7.7 M and 5.4 M parameters, one tokenizer, pretrained on man pages).
The memory starts from the small base; the teacher that builds its datastore is the same model
first fine-tuned on the training split (--adapt-teacher-steps), so it knows the domain at least as
well as the memory's init. Training stops on the held-out loss (memreg train's defaults).
Each step is a plain `memreg` command, printed before it runs: copy them for your own corpus.
The registry is the default local one ($MEMREG_HOME/registry) unless --registry says otherwise.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from domains import DOMAINS, build_domain

REPO = Path(__file__).resolve().parents[1]
LARGE, SMALL = REPO / "models" / "memreg-base-large", REPO / "models" / "memreg-base-small"


def memreg(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "memreg", *args]
    print("$ memreg " + " ".join(shlex.quote(a) for a in args), flush=True)
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        sys.exit(f"quickstart: `memreg {args[0]}` failed (exit {proc.returncode})")
    return proc.stdout or ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", choices=DOMAINS, default="law")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (stage cache) [runs/quickstart-DOMAIN]")
    ap.add_argument("--registry", default=None, help="registry URL (default: the local one under $MEMREG_HOME)")
    ap.add_argument("--version", default="1.0.0", help="version to publish")
    args = ap.parse_args()
    reg = ["--registry", args.registry] if args.registry else []
    work = args.work or REPO / "runs" / f"quickstart-{args.domain}"

    train, heldout = build_domain(args.domain, work)
    name = f"debian-{args.domain}" if args.domain != "code" else "python-stdlib"
    package = work / name
    memreg("train", str(train), "--teacher", str(SMALL), "--adapt-teacher-steps", "60", "--init", str(SMALL),
           "--out", str(package), "--work-dir", str(work / "stages"), "--domain", args.domain, "--name", name,
           "--version", args.version, "--language", "en", "--description", f"{args.domain} texts of a Debian machine")
    memreg("publish", str(package), "--tag", "stable", *reg)
    memreg("list", *reg)
    rows = []
    for base in (LARGE, SMALL):
        out = json.loads(memreg("eval", str(base), "--memory", f"{name}:stable", "--data", str(heldout), *reg,
                                "--json", capture=True))["data"]  # the --json envelope
        rows.append((base.name, out))
    # weight 1 is the memory alone; the small base is the memory's untrained init
    alone = json.loads(memreg("eval", str(SMALL), "--memory", f"{name}:stable=1", "--data", str(heldout), *reg,
                              "--json", capture=True))["data"]
    print_table(rows, alone, heldout)


def print_table(rows: list[tuple[str, dict]], alone: dict, heldout: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    split = json.loads((heldout.parent / "split.json").read_text())
    table = Table(title=f"held-out perplexity on {split['heldout']} documents never trained on "
                        f"({split['heldout_8gram_overlap']:.1%} of their 8-grams occur in training)")
    for col in ("model", "tokens", "alone", "+ memory", "weight"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, out in rows:
        table.add_row(name, f"{out['tokens']:,}", f"{out['perplexity_base']:.1f}",
                      f"{out['perplexity_composed']:.1f}", f"{next(iter(out['weights'].values())):g}")
    table.add_row("memory alone vs its untrained init", f"{alone['tokens']:,}", f"{alone['perplexity_base']:.1f} (init)",
                  f"{alone['perplexity_composed']:.1f} (memory)", "1")
    Console().print(table)


if __name__ == "__main__":
    main()
