"""The `memreg` Typer app. Commands live in their own modules; logic lives in the SDK/registry."""

from __future__ import annotations

import os
import sys

import typer

from memreg.cli import registry_cmds as reg

app = typer.Typer(
    name="memreg",
    help="memreg — the package manager for LLM memories: train memory decoders, publish them to a "
    "registry (a folder or an S3 bucket), and attach them to any base model that shares their tokenizer.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold credentials
    add_completion=False,
)

app.command()(reg.init)
app.command()(reg.publish)
app.command()(reg.pull)
app.command("list")(reg.list_)
app.command()(reg.show)
app.command()(reg.verify)
app.command()(reg.tag)
app.command()(reg.yank)
app.command()(reg.gc)


def _register_ml_commands() -> None:
    """Commands whose modules import torch only inside their function bodies."""
    try:
        from memreg.cli.train import train
    except ImportError:
        pass
    else:
        app.command()(train)
    try:
        from memreg.cli import attach as att
    except ImportError:
        pass
    else:
        app.command()(att.attach)
        app.command("eval")(att.eval_cmd)
        app.command()(att.tune)
    try:
        from memreg.cli.convert import convert_gguf
    except ImportError:
        pass
    else:
        app.command("convert-gguf")(convert_gguf)


_register_ml_commands()


def run() -> None:
    """Console entry point: one-line errors (full traceback with MEMREG_DEBUG=1)."""
    from memreg.registry.errors import MemregError

    # memreg draws its own bars and prints its own one-line notes: keep transformers' loading bars
    # and advisory warnings (e.g. "sequence longer than the model's maximum" while tokenizing a
    # whole corpus) off the terminal unless the user asked for them.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        rc = app(standalone_mode=False)  # click returns typer.Exit's code instead of raising it
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("MEMREG_DEBUG") == "1":
            raise
        known = isinstance(e, (MemregError, ValueError, FileNotFoundError, FileExistsError, PermissionError))
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}" if known else f"error: {type(e).__name__}: {msg}", file=sys.stderr)
        sys.exit(1)
