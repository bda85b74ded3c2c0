"""The `memreg` Typer app. Commands live in their own modules; logic lives in the SDK/registry."""

from __future__ import annotations

import os
import sys

import typer

from memreg.cli import cache_cmds
from memreg.cli import registry_cmds as reg
from memreg.cli import serve as serve_cmd
from memreg.cli import sign_cmds

app = typer.Typer(
    name="memreg",
    help="memreg — the package manager for LLM memories: train memory decoders, publish them to a "
    "registry (a folder or an S3 bucket), and attach them to any base model that shares their tokenizer.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold credentials
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    context_settings={"help_option_names": ["--help", "-h"]},  # to every subcommand; hints name --help
)


def _version(value: bool) -> None:
    if value:
        from memreg import __version__

        typer.echo(f"memreg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version, help="Print memreg's version and exit."),
) -> None:
    """memreg — the package manager for LLM memories."""
    from memreg.cli import output

    output.start(ctx.invoked_subcommand)  # the "command" of the --json envelope

app.command()(reg.init)
app.command()(reg.publish)
app.command()(reg.pull)
app.command("list")(reg.list_)
app.command()(reg.show)
app.command()(reg.verify)
app.command()(reg.tag)
app.command()(reg.yank)
app.command()(reg.unyank)
app.command()(reg.gc)
app.command()(sign_cmds.sign)
app.command()(serve_cmd.serve)  # imports torch and the server only when run
app.add_typer(cache_cmds.app, name="cache")


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


def _click_exception_types() -> tuple[type, ...]:
    """ClickException as the app raises it. typer >= 0.16 vendors its own click (typer._click), so
    `click.ClickException` from the installed click never matches what typer raises: accept both."""
    import click

    types: list[type] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as vendored
    except ImportError:  # a typer that uses the installed click
        pass
    else:
        types.append(vendored)
    return tuple(types)


def _quiet(argv: list[str]) -> bool:
    """--quiet/-q anywhere on the line (huggingface_hub reads its switch once, when first imported)."""
    return any(a in ("--quiet", "-q") for a in argv)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run(argv: list[str] | None = None) -> None:
    """Console entry point. Exit codes: 0 ok, 1 error, 2 usage error (click's, with its usage
    hint), 130 interrupted. One-line errors (full traceback with MEMREG_DEBUG=1); under --json the
    error is the JSON envelope on stderr."""
    from memreg.cli import output
    from memreg.core.errors import MemregError

    argv = sys.argv[1:] if argv is None else argv
    json_mode = "--json" in argv
    output.start(None, json_mode=json_mode)
    # memreg draws its own bars and prints its own one-line notes: keep transformers' loading bars
    # and advisory warnings (e.g. "sequence longer than the model's maximum" while tokenizing a
    # whole corpus) off the terminal unless the user asked for them. Missing weights are never
    # hidden by this: memories load strictly (memreg.models.load_causal_lm(strict=True)).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if json_mode or _quiet(argv):  # a Hub download shows its bars (on stderr) unless the user asked for none
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def fail(type_: str, message: str, code: int, show=None) -> None:
        if json_mode:
            output.print_json_error(type_, message, code)
        elif show is not None:
            show()
        else:
            print(f"error: {output.clean(message)}", file=sys.stderr)  # may quote registry text
        sys.exit(code)

    try:
        with output.routed_warnings():
            rc = app(args=argv, prog_name="memreg", standalone_mode=False)  # typer.Exit's code is returned
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        fail("Aborted", "aborted", 130)
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if isinstance(e, _click_exception_types()):  # usage errors: click's exit code (2) and hint
            fail(type(e).__name__, e.format_message(), e.exit_code, show=e.show)
        if os.environ.get("MEMREG_DEBUG") == "1":
            raise
        known = isinstance(e, (MemregError, ValueError, FileNotFoundError, FileExistsError, PermissionError))
        fail(type(e).__name__, _one_line(e) if known else f"{type(e).__name__}: {_one_line(e)}", 1)
