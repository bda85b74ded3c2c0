"""memreg quickstart: train a memory decoder on law text, publish it, attach it to two base models.

    python examples/quickstart.py            # ~5 minutes on 2 CPU cores

Everything runs on what this machine ships: the domain corpus is Debian's licence texts
(/usr/share/common-licenses) and the copyright files of installed packages (/usr/share/doc/*/copyright,
deduplicated; one in ten held out, by document, for evaluation); the two base models are the ones in
models/ (GPT-2 shaped, 7.7 M and 5.4 M parameters, one tokenizer, pretrained on man pages).
Each step is a plain `memreg` command, printed before it runs: copy them for your own corpus.
The registry is the default local one ($MEMREG_HOME/registry) unless --registry says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LARGE, SMALL = REPO / "models" / "memreg-base-large", REPO / "models" / "memreg-base-small"


def build_corpus(work: Path, *, train_extra_bytes: int = 200_000, heldout_bytes: int = 120_000) -> tuple[Path, Path]:
    """train/ = common-licenses + copyright files; heldout/ = other copyright files (never trained on)."""
    train, heldout = work / "corpus" / "train", work / "corpus" / "heldout"
    if train.is_dir() and heldout.is_dir():
        return train, heldout
    for d in (train, heldout):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for p in sorted(Path("/usr/share/common-licenses").iterdir()):
        if p.is_file():
            shutil.copyfile(p, train / f"common-licenses-{p.name}.txt")
    docs: dict[str, Path] = {}
    for p in sorted(Path("/usr/share/doc").glob("*/copyright")):
        try:
            body = p.read_bytes()
            body.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        docs.setdefault(hashlib.sha256(body).hexdigest(), p)  # many packages ship identical files
    budget = {"train": train_extra_bytes, "heldout": heldout_bytes}
    for digest, p in sorted(docs.items()):
        split = "heldout" if int(digest[:8], 16) % 10 == 0 else "train"
        size = p.stat().st_size
        if size > 50_000 or size > budget[split]:
            continue
        budget[split] -= size
        shutil.copyfile(p, (heldout if split == "heldout" else train) / f"{p.parent.name}.copyright.txt")
    return train, heldout


def memreg(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "memreg", *args]
    print("$ memreg " + " ".join(shlex.quote(a) for a in args), flush=True)
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        sys.exit(f"quickstart: `memreg {args[0]}` failed (exit {proc.returncode})")
    return proc.stdout or ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "quickstart", help="scratch folder (stage cache)")
    ap.add_argument("--registry", default=None, help="registry URL (default: the local one under $MEMREG_HOME)")
    ap.add_argument("--version", default="1.0.0", help="version to publish")
    args = ap.parse_args()
    reg = ["--registry", args.registry] if args.registry else []

    train, heldout = build_corpus(args.work)
    package = args.work / "debian-law"
    memreg("train", str(train), "--teacher", str(LARGE), "--init", str(SMALL), "--out", str(package),
           "--work-dir", str(args.work / "stages"), "--domain", "law", "--name", "debian-law",
           "--version", args.version, "--language", "en",
           "--description", "Debian licence and copyright texts")
    memreg("publish", str(package), "--tag", "stable", *reg)
    memreg("list", *reg)
    rows = []
    for base in (LARGE, SMALL):
        out = json.loads(memreg("eval", str(base), "--memory", "debian-law:stable", "--data", str(heldout), *reg,
                                "--json", capture=True))
        rows.append((base.name, out))
    print_table(rows, len(list(heldout.iterdir())))


def print_table(rows: list[tuple[str, dict]], n_files: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"held-out perplexity on {n_files} Debian copyright files never trained on")
    for col in ("base", "tokens", "base alone", "+ debian-law memory", "weight"):
        table.add_column(col, justify="right" if col != "base" else "left")
    for name, out in rows:
        table.add_row(name, f"{out['tokens']:,}", f"{out['perplexity_base']:.1f}",
                      f"{out['perplexity_composed']:.1f}", f"{next(iter(out['weights'].values())):g}")
    Console().print(table)


if __name__ == "__main__":
    main()
