"""A composition behind transformers' own OpenAI-compatible server (`transformers serve`).

memreg writes no HTTP layer: the routes, request validation, chat templates, streaming and the
inference thread are transformers' (`transformers.cli.serving`, the `serving` extra). What memreg
adds is the model those handlers see: one model already loaded in this process (a composition
built from the registry, or a folder loaded through `AutoModelForCausalLM`), pinned as the only
model the server answers for. transformers' own loader cannot be used as is for a composition: it
looks the architecture up as an attribute of the `transformers` package, where a class registered
with the Auto classes is not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memreg.core.errors import NotServableError, ServingExtraMissingError

if TYPE_CHECKING:
    from fastapi import FastAPI

SERVE_INSTALL = "pip install 'memreg[serve]'"


def require_serving() -> None:
    """Fail early, before any model loads, when the serving extra or transformers' server is missing."""
    import importlib.util

    import transformers
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise ServingExtraMissingError(f"serving needs FastAPI, uvicorn and openai: {SERVE_INSTALL}")
    if importlib.util.find_spec("transformers.cli.serving") is None:  # the layout memreg builds on (5.24's)
        raise ServingExtraMissingError(f"memreg serve runs on the server of transformers >= 5.24, not "
                                       f"{transformers.__version__}: pip install 'transformers[serving]>=5.24,<6'")


def load_folder(folder: str | os.PathLike) -> tuple[Any, Any]:
    """A saved composition (or any causal-LM folder) as transformers loads it, and its tokenizer.

    A composition folder holds references, not weights: `AutoModelForCausalLM` resolves them once
    memreg's classes are registered with the Auto classes. The tokenizer is the folder's own when it
    has one, else the model's (a composition's is its base's)."""
    from memreg.compose import ComposedForCausalLM  # noqa: F401 - registers the composition with the Auto classes
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: give a saved composition folder, or a base with -m REF=WEIGHT")
    if not (path / "config.json").is_file():
        raise NotServableError(f"{folder} has no config.json: give a folder written by save_pretrained "
                               "(a composition or a causal language model)")
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
    model.eval()
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    else:
        tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise NotServableError(f"{folder} has no tokenizer and its model names none: save the tokenizer into the folder")
    return model, tokenizer


def _pinned_manager(model: Any, tokenizer: Any, name: str):
    """transformers' ModelManager, pinned (`force_model`) to `name`, whose loader hands out the
    model and tokenizer already in memory instead of reading them by architecture name."""
    from transformers.cli.serving.model_manager import ModelManager

    class PinnedModelManager(ModelManager):
        @staticmethod
        def process_model_name(model_id: str) -> str:
            # transformers appends "@main" (a Hub revision) to a name that is not a path: the model is
            # answered for, and reported in every response, under the name /v1/models lists
            return model_id

        def _load_processor(self, model_id_and_revision: str, gguf_file: str | None = None) -> Any:
            return tokenizer

        def _load_model(self, model_id_and_revision: str, **kwargs: Any) -> Any:
            return model

    return PinnedModelManager(device=str(model.device), dtype=None, force_model=name)


# the request fields that bound the tokens generated, by endpoint (chat takes either of its two)
_MAX_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _within_context(handler: type, context: int | None) -> type:
    """`handler` (one of transformers' endpoint handlers) generating within the model's context.

    transformers raises a request without a token limit to 1024 new tokens whatever the model: past
    a base's position table (the shipped bases hold 512) that is an IndexError in the middle of
    `generate`, a 500. Here such a request generates up to the context (prompt included) instead,
    and a limit that cannot fit even after an empty prompt is a 400 naming the context."""
    if context is None:  # a model with no position table (rotary without a stated limit): as transformers does
        return handler

    class WithinContext(handler):
        def _build_generation_config(self, body: dict, model_generation_config: Any, use_cb: bool = False) -> Any:
            config = super()._build_generation_config(body, model_generation_config, use_cb=use_cb)
            asked = next((body[k] for k in _MAX_TOKEN_FIELDS if body.get(k) is not None), None)
            if asked is None:
                config.max_new_tokens = None  # max_length counts the prompt: generation stops at the context
                config.max_length = context
            elif int(asked) >= context:
                raise ValueError(f"{int(asked)} new tokens do not fit the model's context of {context} tokens "
                                 f"(prompt included): ask for fewer")
            return config

    WithinContext.__name__ = handler.__name__
    return WithinContext


def build_app(model: Any, tokenizer: Any, name: str, *, chat_template_kwargs: dict | None = None) -> "FastAPI":
    """transformers' FastAPI app (every route of `transformers serve`) answering for `model` alone,
    under `name`. Wired as `transformers.cli.serve.Serve` wires it, without continuous batching
    (which needs a model with paged attention) or torch.compile."""
    require_serving()
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    from memreg.models import context_length

    context = context_length(model.config)
    manager = _pinned_manager(model, tokenizer, name)
    state = GenerationState(continuous_batching=False, compile=False)
    kwargs = {"model_manager": manager, "generation_state": state}
    templated = {**kwargs, "chat_template_kwargs": chat_template_kwargs or {}}
    app = build_server(
        manager,
        _within_context(ChatCompletionHandler, context)(**templated),
        completion_handler=_within_context(CompletionHandler, context)(**kwargs),
        response_handler=_within_context(ResponseHandler, context)(**templated),
        transcription_handler=TranscriptionHandler(manager, state),
        systemone_handler=SystemOneHandler(**templated),
        generation_state=state,
    )
    _client_errors_as_400(app)
    return app


def _client_errors_as_400(app: "FastAPI") -> None:
    """transformers' handlers validate the fields' names (422) but let a request that lacks a field
    (`messages`), has one of the wrong type, asks for a chat template the tokenizer does not have, or
    gives generation parameters `generate` refuses, fail as a bare 500 "Internal Server Error". Those
    are the client's to fix: a 400 with OpenAI's error body, whose message names what was wrong."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    def handler(_request: Request, exc: Exception) -> JSONResponse:
        what = f"the request lacks the field {exc}" if isinstance(exc, KeyError) else str(exc).strip() or type(exc).__name__
        body = {"error": {"message": what, "type": "invalid_request_error", "param": None, "code": None}}
        return JSONResponse(body, status_code=400)

    for kind in (KeyError, TypeError, ValueError):
        app.add_exception_handler(kind, handler)


def run_server(model: Any, tokenizer: Any, name: str, *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "warning") -> None:
    """Run the server in this process until interrupted (Ctrl-C, SIGTERM)."""
    import uvicorn

    app = build_app(model, tokenizer, name)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
