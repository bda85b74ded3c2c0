"""`publish_tuned`: publish a memory again as a new version whose card recommends a fitted weight,
and (with `router=`) ships a fitted router in router/, listed in the card's metrics.router.

What `memreg tune --write` (and `--router --write`) does. The files are the package's own (pulled, or a folder), hard-linked
into a staging folder next to them with only memreg.json rewritten, so the registry finds every
blob by digest and uploads nothing but the new card, README and manifest.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from memreg.fit import FittedWeights
from memreg.core.errors import PackageError
from memreg.schemas.router import ROUTER_FOLDER, RouterRecord

if TYPE_CHECKING:
    from memreg.registry import Registry
    from memreg.registry.api import PublishResult
    from memreg.router.fitting import FittedRouter


def publish_tuned(reg: Registry, spec: str, version: str, fitted: FittedWeights, *, base: str,
                  dataset: str, tags: Sequence[str] = (), router: FittedRouter | None = None) -> PublishResult:
    """Publish `spec` (a registry reference or a package folder) as `version` of the same name, its
    card recommending `fitted.weights[0]` and recording the fit as one more evaluation; `router`
    (fitted for this base and this one memory) replaces any router the package shipped."""
    from memreg.compose import parse_memory_spec
    from memreg.registry.package import CARD, read_card, scan_folder
    from memreg.schemas import BaseEvaluation

    ref, _ = parse_memory_spec(spec)
    source = Path(ref).expanduser()
    if not source.is_dir():
        source = reg.pull(reg.resolve(ref).ref)
    card = read_card(source)
    if not card.name:
        raise PackageError(f"{source} has no package name in its {CARD}: publish it once with a name first")
    weight = float(fitted.weights[0])
    evaluations = list(card.metrics.evaluations)
    if math.isfinite(fitted.perplexity) and math.isfinite(fitted.base_perplexity):
        evaluations.append(BaseEvaluation(
            base=base, dataset=dataset, tokens=fitted.tokens, perplexity_base=fitted.base_perplexity,
            perplexity_with_memory=fitted.perplexity, weight=weight))
    update = {"recommended_weight": weight, "evaluations": evaluations}
    if router is not None:
        update["router"] = router_record(router)
    metrics = card.metrics.model_copy(update=update)
    new_card = card.model_copy(update={"version": version, "metrics": metrics})
    staging = _staging_beside(source)
    try:
        for f in scan_folder(source):
            if f.path == CARD or (router is not None and f.path.startswith(f"{ROUTER_FOLDER}/")):
                continue
            target = staging / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f.local, target)
            except OSError:  # another file system, or links not allowed: a copy hashes the same
                shutil.copyfile(f.local, target)
        if router is not None:
            from memreg.router.io import save_router

            save_router(router.router, staging / ROUTER_FOLDER)
        (staging / CARD).write_text(new_card.model_dump_json(indent=2, exclude_none=True))
        return reg.publish(staging, name=card.name, version=version, tags=list(tags))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def router_record(fitted: FittedRouter) -> RouterRecord:
    """How a manifest lists a shipped router: its base, features and held-out gain."""
    config = fitted.config
    return RouterRecord(base=config.base.name, tokenizer=config.base.tokenizer, hidden_size=config.base.hidden_size,
                        features=list(config.features), held_out_tokens=int(len(fitted.held_out_router)),
                        perplexity_fixed=fitted.perplexity_fixed, perplexity_router=fitted.perplexity_router,
                        gain=fitted.gain)


def _staging_beside(source: Path) -> Path:
    try:  # next to the source, so that hard links work
        return Path(tempfile.mkdtemp(prefix=".memreg-tune-", dir=source.parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix=".memreg-tune-"))
