"""`memreg serve`: a composition behind transformers' OpenAI-compatible server (thin: parse, load, run).

torch, transformers and the server are imported inside the function, so registering the command
costs nothing to `memreg list`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from memreg.cli.attach import NoRouterOpt
from memreg.cli.options import RegistryOpt, StorageOpt
from memreg.cli.output import err_console
from memreg.cli.sign_cmds import PublicKeyOpt, TrustOpt

SourceArg = Annotated[
    str,
    typer.Argument(
        metavar="SOURCE",
        help="A saved composition folder (written by the composed model's save_pretrained), or, with -m, "
        "the base model to compose: a Hugging Face model folder or id, or a .gguf file.",
        show_default=False,
    ),
]
MemoryOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--memory", "-m", metavar="REF[=WEIGHT]",
        help="A memory to attach to the base SOURCE, repeatable: a registry reference (law, law@1.2.0, "
        "law:stable) or a package folder; the weight defaults to the manifest's recommended weight.",
    ),
]
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def serve(
    source: SourceArg,
    memory: MemoryOpt = None,
    name: Annotated[Optional[str], typer.Option(
        help="The model id clients send and /v1/models lists. Default: the folder's name, or the base's "
        "name and the memories' names joined by '+'.")] = None,
    host: Annotated[str, typer.Option(
        help="Address to listen on. The server has no authentication: 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(
        help=f"uvicorn's log level ({', '.join(LOG_LEVELS)}); 'info' logs every request.")] = "warning",
    force: Annotated[bool, typer.Option("--force", help="Compose even when a tokenizer check fails (experts only).")] = False,
    trust: TrustOpt = None,
    public_key: PublicKeyOpt = None,
    no_router: NoRouterOpt = False,
    registry: RegistryOpt = None,
    storage_option: StorageOpt = None,
) -> None:
    """Serve a composition over an OpenAI-compatible HTTP API (transformers' own server).

    \b
    memreg serve ./law-composition     # a folder saved with save_pretrained
    memreg serve gpt2 -m law=0.3       # a base and memories, composed now

    \b
    Endpoints (those of `transformers serve`):
      POST /v1/completions       continue a prompt ("stream": true for SSE)
      POST /v1/chat/completions  chat, in the base tokenizer's chat template
      POST /v1/responses         OpenAI's Responses API
      GET  /v1/models            the one model served, under --name
      GET  /health               {"status": "ok"} once the model is loaded

    \b
    Any OpenAI client works:
      client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")
      client.completions.create(model=NAME, prompt="The court",
                                max_tokens=50, temperature=0)

    Requests are answered one at a time, on one inference thread.
    """
    if log_level.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}", param_hint="'--log-level'")
    from memreg.serve import load_folder, require_serving, run_server

    require_serving()  # before any model loads
    if memory:
        model, tokenizer, default_name = _composed(source, memory, registry, storage_option, force, trust, public_key,
                                                   router=None if no_router else "auto")
    else:
        model, tokenizer = load_folder(source)
        if no_router:
            model.use_router = False  # a router saved with the composition: the fixed weights apply
        default_name = Path(source).expanduser().resolve().name
    served = name or default_name
    err_console.print(f"serving {served} on http://{host}:{port}/v1 (Ctrl-C to stop)", markup=False, highlight=False)
    run_server(model, tokenizer, served, host=host, port=port, log_level=log_level.lower())


def _composed(base: str, specs: list[str], registry: str | None, options: list[str] | None, force: bool,
              trust: str | None, public_keys: list[Path] | None, *, router: Any = "auto") -> tuple[Any, Any, str]:
    """The base and memories composed as `memreg attach` composes them (same checks, same errors; a
    single memory's package router is used unless `router` is None)."""
    from memreg.cli.attach import _compose
    from memreg.compose import parse_memory_spec

    model = _compose(base, specs, registry, options, force, bars=True, hint="'--memory'", trust=trust,
                     public_keys=public_keys or [], router=router)
    refs = [parse_memory_spec(s)[0] for s in specs]  # as typed, without their weights
    return model, model.tokenizer, "+".join(Path(ref).name or ref for ref in [base, *refs])
