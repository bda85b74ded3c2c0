"""A router on disk: `router_config.json` (RouterConfig) + `router.safetensors`, never a pickle.

`load_router` checks that the file holds exactly the tensors the config describes (names and
shapes): a router is never part random. `check_router` refuses a router for a base it was not
fitted for (tokenizer fingerprint, hidden size) or for another number of members, before it runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from memreg.core.errors import RouterFileError, RouterMismatchError, first_validation_error
from memreg.schemas.router import ROUTER_CONFIG, RouterBase, RouterConfig

PREFIX = "router."  # tensor names in the file: apart from any model tensor a package also holds


def save_router(router: Any, folder: str | os.PathLike) -> Path:
    """Write the router's config and weights into `folder` (created); returns the config's path."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {PREFIX + k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()}
    save_file(tensors, str(out / router.config.weights_file), metadata={"format": "pt", "memreg": "router"})
    path = out / ROUTER_CONFIG
    path.write_text(router.config.model_dump_json(indent=2, exclude_none=True) + "\n")
    return path


def read_router_config(folder: str | os.PathLike) -> RouterConfig:
    """The config alone (no torch): what a package lists and what compose checks first."""
    path = Path(folder) / ROUTER_CONFIG
    if not path.is_file():
        raise RouterFileError(f"{path.parent} has no {ROUTER_CONFIG}: save a router with memreg.router.save_router")
    try:
        return RouterConfig.model_validate_json(path.read_bytes())
    except ValueError as e:
        raise RouterFileError(f"{path} is not a router config: {first_validation_error(e)}") from e


def load_router(folder: str | os.PathLike) -> Any:
    """The Router saved in `folder`, every tensor checked against its config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from memreg.router.model import Router

    config = read_router_config(folder)
    path = Path(folder) / config.weights_file
    if not path.is_file():
        raise RouterFileError(f"{path.parent} has {ROUTER_CONFIG} but no {config.weights_file}")
    try:
        stored = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RouterFileError(f"{path} is not a safetensors file: {e}") from e
    router = Router(config)
    expected = {PREFIX + k: tuple(v.shape) for k, v in router.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in stored.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        shape = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        what = (f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the config does not describe" if extra
                else f"stores {shape[0]} as {got[shape[0]]}, the config says {expected[shape[0]]}")
        raise RouterFileError(f"{path} {what}: save the router again with memreg.router.save_router")
    router.to(next(iter(stored.values())).dtype)  # as saved (float32 unless fitted in another dtype)
    router.load_state_dict({k[len(PREFIX):]: v for k, v in stored.items()})
    return router.eval()


def hidden_size_of(model: Any) -> int:
    """The size of a causal LM's last hidden state (config.hidden_size; GPT-2's n_embd)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not size:
        raise RouterMismatchError(f"{type(model).__name__} does not say its hidden size (config.hidden_size): "
                                  "a router cannot be bound to it")
    return int(size)


def base_binding(model: Any, tokenizer: Any, name: str) -> RouterBase:
    """What ties a router to this base: its tokenizer fingerprint and hidden size."""
    from memreg.registry.fingerprinting import fingerprint

    if tokenizer is None:
        raise RouterMismatchError("a router is bound to its base's tokenizer: compose with the base's tokenizer")
    return RouterBase(name=name, tokenizer=fingerprint(tokenizer).digest, hidden_size=hidden_size_of(model))


def check_router(config: RouterConfig, *, tokenizer_digest: str, hidden_sizes: list[int], where: str = "this router") -> None:
    """Refuse `config` unless it was fitted for this base (fingerprint, hidden size) and members."""
    if config.base.tokenizer != tokenizer_digest:
        raise RouterMismatchError(
            f"{where} was fitted for the base {config.base.name!r}, whose tokenizer fingerprint is "
            f"{config.base.tokenizer[:19]}…; this base's is {tokenizer_digest[:19]}…: fit a router for this base "
            "(memreg tune BASE MEMORY --data FILES --router) or compose without it (--no-router)")
    if config.base.hidden_size != hidden_sizes[0]:
        raise RouterMismatchError(
            f"{where} was fitted for a base with hidden size {config.base.hidden_size}; this base's is "
            f"{hidden_sizes[0]}: fit a router for this base or compose without it (--no-router)")
    if config.members != len(hidden_sizes):
        raise RouterMismatchError(
            f"{where} weighs {config.members} members (the base and {config.members - 1} memories); this composition "
            f"has {len(hidden_sizes)}: compose the memories it was fitted with, or compose without it (--no-router)")
    if "hidden" in config.features and list(config.hidden_sizes) != list(hidden_sizes):
        raise RouterMismatchError(
            f"{where} reads hidden states of sizes {config.hidden_sizes}; these members' are {hidden_sizes}: "
            "compose the memories it was fitted with, or compose without it (--no-router)")


def config_json(config: RouterConfig) -> dict:
    return json.loads(config.model_dump_json(exclude_none=True))
