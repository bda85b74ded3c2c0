"""The router a format-1 memreg wrote keeps loading (tests/golden/router-format1, never rewritten):
its config validates and keeps its content, its safetensors load into the router the config
describes, and the package card listing it (metrics.router) still parses."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from memreg.router import load_router, position_inputs, read_router_config
from memreg.schemas import PackageCard
from memreg.schemas.router import RouterConfig

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "router-format1"


def test_golden_router_config_loads_and_keeps_its_content():
    raw = (GOLDEN / "router_config.json").read_text()
    config = RouterConfig.model_validate_json(raw)
    assert json.loads(config.model_dump_json(exclude_none=True)) == json.loads(raw)
    assert read_router_config(GOLDEN) == config
    assert config.base.hidden_size == 32 and config.threshold == 0.05


def test_golden_router_weights_load_and_route():
    router = load_router(GOLDEN)
    g = torch.Generator().manual_seed(0)
    lps = [torch.log_softmax(torch.randn(5, 7, 320, generator=g), -1) for _ in range(2)]
    w = router(position_inputs(lps))
    assert w.shape == (5, 7, 2)
    assert torch.allclose(w.sum(-1), torch.ones(5, 7, dtype=torch.float64), atol=1e-12)


def test_golden_card_lists_the_router_for_its_base():
    card = PackageCard.model_validate_json((GOLDEN / "memreg.json").read_text())
    config = read_router_config(GOLDEN)
    assert card.metrics.router is not None
    assert card.metrics.router.tokenizer == config.base.tokenizer
    assert card.metrics.router.gain == card.metrics.router.perplexity_fixed / card.metrics.router.perplexity_router
