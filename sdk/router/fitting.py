"""Fitting a router: maximise the mixture's log-likelihood on validation text, members frozen.

1. `collect`: one teacher-forced pass of every member over the text in sliding windows, keeping for
   each scored position the router's features (memreg.router.features) and each member's
   log-probability of the observed token: (N, K). Nothing else of the members is needed afterwards.
2. `train_router`: Adam on the router's parameters alone, the loss the mixture's negative
   log-likelihood (memreg.mixture.mix_log_probs, the one mixture function); the last tenth of the
   fitting positions is a stopping split (the best step on it is kept), never trained on.
3. `fit_router`: both, started at the EM-fitted fixed weights of the same text (so the router begins
   as the best fixed weight), and measured against those fixed weights on held-out text that neither
   the router nor EM saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from memreg.fit import em_weights
from memreg.mixture import mix_log_probs
from memreg.router.features import RouterInputs, position_inputs
from memreg.router.model import Router
from memreg.schemas.router import FEATURES, RouterConfig, RouterFit

DEFAULT_FEATURES = ("entropy", "top1", "agreement")


@dataclass
class Collected:
    """Per scored position: the router's inputs, and each member's log p(observed token) (N, K) float64."""

    inputs: RouterInputs
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def take(self, index: slice | torch.Tensor) -> "Collected":
        return Collected(self.inputs.map(lambda t: t[index]), self.targets[index])


@torch.no_grad()
def collect(model: Any, data: Any, *, hidden: bool = False, context: int | None = None, stride: int | None = None,
            batch_size: int = 4, progress: Any = None) -> Collected:
    """Features and target log-probabilities of `data` (text, documents or token ids) under every
    distinct member of the composition `model` (base first), in the windows `memreg.evaluate` scores."""
    from memreg.compose.members import member_step
    from memreg.compose.scoring import encode_documents, window
    from memreg.evaluate import pad_windows, sliding_windows

    context, stride = window(model, context, stride)
    docs = encode_documents(model.tokenizer, data)
    device = next(model.base.parameters()).device
    if progress is not None:
        progress.set_size(sum(d.size - 1 for d in docs))
    parts_in: list[RouterInputs] = []
    parts_tgt: list[torch.Tensor] = []
    for doc in docs:
        ids = torch.as_tensor(doc)
        wins = sliding_windows(ids.numel(), context=context, stride=stride)
        for b in range(0, len(wins), batch_size):
            batch = wins[b:b + batch_size]
            inp, mask = pad_windows(ids, batch)
            inp, mask = inp.to(device), mask.to(device)
            lps, hids = [], []
            for j, m in enumerate(model.members):
                step = member_step(m, model.member_keys[j], model.vocab_size, inp, attention_mask=mask,
                                   position_ids=None, extra={"output_hidden_states": True if hidden else None})
                lps.append(step.log_probs)
                if hidden:
                    hids.append(step.hidden_states[-1])
            feats = position_inputs(lps, hids if hidden else None)
            for i, (s, e, first) in enumerate(batch):
                pos = torch.arange(first - s - 1, e - s - 1, device=device)  # position p predicts token p+1
                tgt = inp[i, pos + 1]
                parts_in.append(feats.map(lambda t: t[i, pos].cpu()))
                parts_tgt.append(torch.stack([lp[i, pos, tgt].double().cpu() for lp in lps], -1))
            if progress is not None:
                progress.relative_update(sum(e - first for _, e, first in batch))
    return Collected(RouterInputs.cat(parts_in), torch.cat(parts_tgt))


def mixture_nll(weights: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the mixture at per-position weights (N, K), base first."""
    lps = [targets[:, k] for k in range(targets.shape[1])]
    return -mix_log_probs(lps, weights[:, 1:]).mean()


def router_log_probs(router: Router, data: Collected) -> np.ndarray:
    """log p_mix(observed token) per position with the router as it runs in use (threshold included)."""
    with torch.no_grad():
        w = router(data.inputs)
    lps = [data.targets[:, k] for k in range(data.targets.shape[1])]
    return mix_log_probs(lps, w[:, 1:]).numpy()


def train_router(router: Router, data: Collected, *, steps: int = 400, lr: float = 1e-2, stop_fraction: float = 0.1,
                 weight_decay: float = 1e-4) -> tuple[Router, int]:
    """Fit `router` in place on `data` (full-batch Adam); returns it at its best step on the stopping
    split (the last `stop_fraction` of the positions), and that step (0: the starting weights)."""
    n = len(data)
    cut = n - max(1, int(n * stop_fraction)) if n > 10 else n
    train, stop = data.take(slice(0, cut)), data.take(slice(cut, n))
    opt = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=weight_decay)

    def stop_loss() -> float:
        if len(stop) == 0:
            return 0.0
        with torch.no_grad():
            return float(mixture_nll(router(stop.inputs, threshold=False), stop.targets))

    best, best_step = stop_loss(), 0
    best_state = {k: v.clone() for k, v in router.state_dict().items()}
    router.train()
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = mixture_nll(router(train.inputs, threshold=False), train.targets)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps:
            now = stop_loss()
            if now < best - 1e-9:
                best, best_step = now, step
                best_state = {k: v.clone() for k, v in router.state_dict().items()}
    router.load_state_dict(best_state)
    return router.eval(), best_step


@dataclass
class FittedRouter:
    """The fitted router and what it measured on held-out text: per-token log-probabilities of the
    base alone, the mixture at the EM fixed weights, and the mixture with the router."""

    router: Router
    fixed_weights: list[float]  # per distinct member (base excluded), EM-fitted on the fitting text
    held_out_base: np.ndarray
    held_out_fixed: np.ndarray
    held_out_router: np.ndarray

    @property
    def config(self) -> RouterConfig:
        return self.router.config

    @property
    def perplexity_fixed(self) -> float:
        return float(math.exp(-self.held_out_fixed.mean()))

    @property
    def perplexity_router(self) -> float:
        return float(math.exp(-self.held_out_router.mean()))

    @property
    def gain(self) -> float:
        """perplexity at the best fixed weight / perplexity with the router (above 1: the router helps)."""
        return self.perplexity_fixed / self.perplexity_router


def fit_router_on(fit: Collected, held_out: Collected, config: RouterConfig, *, steps: int = 400, lr: float = 1e-2,
                  seed: int = 0, dataset: str = "") -> FittedRouter:
    """Fit a router of shape `config` on collected positions, started at the EM weights of the same
    positions, and measure it on `held_out` against those fixed weights."""
    em = em_weights([fit.targets[:, k].numpy() for k in range(fit.targets.shape[1])])
    torch.manual_seed(seed)
    router = Router(config).start_at([em.base_weight, *em.weights])
    router, kept = train_router(router, fit, steps=steps, lr=lr)
    base = held_out.targets[:, 0].numpy()
    fixed = mix_log_probs([held_out.targets[:, k] for k in range(held_out.targets.shape[1])], em.weights).numpy()
    routed = router_log_probs(router, held_out)
    record = RouterFit(dataset=dataset, tokens=len(fit), held_out_tokens=len(held_out),
                       perplexity_base=float(math.exp(-base.mean())), perplexity_fixed=float(math.exp(-fixed.mean())),
                       perplexity_router=float(math.exp(-routed.mean())), fixed_weights=list(em.weights), steps=kept)
    router.config = config.model_copy(update={"fit": record})
    return FittedRouter(router, list(em.weights), base, fixed, routed)


def router_config_for(model: Any, *, base_name: str, features: Sequence[str] = DEFAULT_FEATURES, hidden_units: int = 32,
                      hidden_projection: int = 16, threshold: float | None = None) -> RouterConfig:
    """The shape of a router for the composition `model`, bound to its base."""
    from memreg import __version__
    from memreg.router.io import base_binding, hidden_size_of

    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"router feature {unknown[0]!r} is not one of {', '.join(FEATURES)}")
    names = ["base", *(model.names[model.member_of_memory.index(j)] for j in range(1, len(model.members)))]
    return RouterConfig(
        features=list(features), members=len(model.members), member_names=names, hidden_units=hidden_units,
        hidden_projection=hidden_projection if "hidden" in features else 0,
        hidden_sizes=[hidden_size_of(m) for m in model.members],
        base=base_binding(model.base, model.tokenizer, base_name), threshold=threshold, memreg_version=__version__)


def split(data: Collected, held_out_fraction: float) -> tuple[Collected, Collected]:
    """The first positions to fit on, the last `held_out_fraction` held out (in text order)."""
    n = len(data)
    cut = n - max(1, int(round(n * held_out_fraction)))
    if cut < 2:
        raise ValueError(f"{n} scored tokens: too few to fit a router and hold some out; give more text")
    return data.take(slice(0, cut)), data.take(slice(cut, n))


def fit_router(model: Any, data: Any, *, held_out: Any = None, held_out_fraction: float = 0.2, base_name: str = "base",
               features: Sequence[str] = DEFAULT_FEATURES, hidden_units: int = 32, hidden_projection: int = 16,
               threshold: float | None = None, steps: int = 400, lr: float = 1e-2, seed: int = 0,
               context: int | None = None, stride: int | None = None, dataset: str = "",
               progress: Any = None) -> FittedRouter:
    """Fit a router for the composition `model` on `data` (text, documents or token ids).

    held_out: text to measure it on; None holds out the last `held_out_fraction` of `data`'s scored
    tokens instead (neither the router nor the EM weights it is compared with see them)."""
    config = router_config_for(model, base_name=base_name, features=features, hidden_units=hidden_units,
                               hidden_projection=hidden_projection, threshold=threshold)
    hidden = "hidden" in features
    collected = collect(model, data, hidden=hidden, context=context, stride=stride, progress=progress)
    if held_out is None:
        fit, test = split(collected, held_out_fraction)
    else:
        fit, test = collected, collect(model, held_out, hidden=hidden, context=context, stride=stride)
    return fit_router_on(fit, test, config, steps=steps, lr=lr, seed=seed, dataset=dataset)


def routed_log_probs(model: Any, data: Any, *, context: int | None = None, stride: int | None = None,
                     progress: Any = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Held-out text under a composition with a router: each distinct member's per-token
    log-probabilities (base first, as memreg.compose.member_target_log_probs gives them) and the
    routed mixture's, from one pass of each member."""
    data = collect(model, data, hidden=model.router.uses_hidden, context=context, stride=stride, progress=progress)
    return [data.targets[:, k].numpy() for k in range(data.targets.shape[1])], router_log_probs(model.router, data)
