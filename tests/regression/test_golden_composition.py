"""A composition saved in memreg_format 1 keeps loading: the golden config.json (relative folders,
resolved against its own folder) rebuilds through AutoModelForCausalLM, without trust_remote_code, into
the same mixture that memreg.compose builds from the same members today."""

from __future__ import annotations

import json

import torch

import memreg  # noqa: F401  (registers the composition with the Auto classes)
from conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "composition-format1"
BASE, MEMORY = REPO / "models" / "memreg-base-large", REPO / "models" / "memreg-base-small"


def test_golden_composition_loads_as_the_same_mixture():
    from transformers import AutoConfig, AutoModelForCausalLM

    stored = json.loads((GOLDEN / "config.json").read_text())
    assert stored["memreg_format"] == 1 and stored["model_type"] == "memreg_composition"
    config = AutoConfig.from_pretrained(GOLDEN, trust_remote_code=False)
    assert list(config.weights) == [0.4]
    loaded = AutoModelForCausalLM.from_pretrained(GOLDEN, trust_remote_code=False)
    fresh = memreg.compose(str(BASE), [str(MEMORY)], [0.4])
    ids = fresh.tokenizer(["Permission is hereby granted, free of charge"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got, want = loaded(input_ids=ids).logits, fresh(input_ids=ids).logits
    assert torch.equal(got, want)
    # the mixture really is base + memory at 0.4, not the base alone
    with torch.no_grad():
        alone = memreg.compose(str(BASE), [str(MEMORY)], [0.0])(input_ids=ids).logits
    assert not torch.allclose(got, alone)
