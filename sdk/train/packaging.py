"""Stage 7: writing the package folder (`memreg.registry.package` reads one). A standard Hugging
Face model folder (config.json, model.safetensors, tokenizer files) plus `memreg.json`, a
`PackageCard` that `memreg publish` reads. Written into a temporary sibling folder and moved into
place last, so a crash leaves no half package.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from memreg.registry.package import CARD as CARD_FILE
from memreg.schemas import PackageCard


def write_package(out: Path, *, model: Any, tokenizer: Any, card: dict[str, Any]) -> PackageCard:
    """Write model + tokenizer + memreg.json to `out` (replacing it); returns the validated card."""
    from memreg.registry.fingerprinting import fingerprint

    out = Path(out)
    tmp = save_model_folder(out, model, tokenizer)
    card = {**card, "tokenizer": fingerprint(tmp).model_dump(mode="json")}
    validated = PackageCard.model_validate(card)
    (tmp / CARD_FILE).write_text(validated.model_dump_json(indent=2, exclude_none=True) + "\n")
    replace_folder(tmp, out)
    return validated


def save_model_folder(out: Path, model: Any, tokenizer: Any) -> Path:
    """model (safetensors) + tokenizer into a fresh temporary sibling of `out`; returns it."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    return tmp


def replace_folder(tmp: Path, out: Path) -> None:
    """Move a fully written `tmp` folder to `out`, replacing what is there: readers see the old
    folder or the new one, and a crash before the first rename leaves the old one intact."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
