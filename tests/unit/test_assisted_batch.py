"""Assisted decoding of a left-padded batch: every row's greedy output equals the same prompt
drafted alone and plain (undrafted) composed decoding of the batch, though rows keep different
numbers of drafts per round (the rejected slots of one row are masked while another row keeps them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_lms import LICENSES, gpt2, real_text, train_tokenizer

from memreg.compose import compose


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(real_text(LICENSES))


@pytest.fixture(scope="module")
def parts(tok):
    """float64 models (see test_assisted.py): batched, unbatched and plain decoding round alike."""
    v = len(tok)
    return gpt2(v, 0, layers=3, width=48).double(), gpt2(v, 1, layers=1).double(), gpt2(v, 2, layers=1).double()


@pytest.fixture(scope="module")
def composed(tok, parts):
    return compose(parts[0], [(parts[1], tok)], [0.4], tokenizer=tok)


@pytest.fixture(scope="module")
def batch(tok):
    """Three prompts of different lengths (left padding of 0, a few and many tokens); the last
    repeats itself, so prompt lookup finds drafts in one row and not in the others."""
    text = Path(LICENSES[-1]).read_text()
    rows = [text[100:160], text[500:506], text[900:940] + text[900:920]]
    return tok(rows, return_tensors="pt", padding=True, padding_side="left")


def _alone(composed, batch, b, **kw):
    """Row b drafted alone (its padding removed), returned left-padded back to the batch's width."""
    keep = batch["attention_mask"][b].bool()
    ids = batch["input_ids"][b][keep][None]
    out = composed.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    pad = batch["input_ids"].shape[1] - ids.shape[1]
    return torch.cat([batch["input_ids"][b, :pad], out[0]]).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["memory", "outside", "lookup", "memory-unsure"])
def test_batched_drafted_greedy_equals_unbatched_and_plain_composed(composed, parts, batch, source):
    drafting = {"memory": dict(assistant_model=parts[1], num_assistant_tokens=3),
                "outside": dict(assistant_model=parts[2], num_assistant_tokens=4, num_assistant_tokens_schedule="constant"),
                "lookup": dict(prompt_lookup_num_tokens=5),
                "memory-unsure": dict(assistant_model=parts[1], num_assistant_tokens=6, assistant_confidence_threshold=0.3),
                }[source]
    kw = dict(max_new_tokens=20, eos_token_id=[])
    plain = composed.generate(**batch, **kw)
    out = composed.generate(**batch, return_dict_in_generate=True, **drafting, **kw)
    assert out.sequences.tolist() == plain.tolist()
    for b in range(batch["input_ids"].shape[0]):
        assert _alone(composed, batch, b, **drafting, **kw) == plain[b].tolist()
    assert out.extra["accepted"] < out.extra["drafted"]  # drafts rejected: rows keep different numbers
    if source != "outside":  # an unrelated random model's drafts are never kept
        assert out.extra["accepted"] > 0


@pytest.mark.slow
def test_rows_that_stop_early_are_padded_as_transformers_pads_them(composed, parts, batch, tok):
    """An eos reached by one row mid-round: that row stops there and is filled with the pad token,
    the others go on; per-row weights and a processor reach every row."""
    kw = dict(max_new_tokens=20, repetition_penalty=1.2, weights=torch.tensor([[0.4], [0.0], [0.9]]))
    free = composed.generate(**batch, eos_token_id=[], **kw)
    width = batch["input_ids"].shape[1]
    eos = int(free[0, width + 6])  # row 0 emits it at its 7th new token (maybe others too)
    plain = composed.generate(**batch, eos_token_id=eos, pad_token_id=tok.pad_token_id, **kw)
    out = composed.generate(**batch, eos_token_id=eos, pad_token_id=tok.pad_token_id, assistant_model=parts[1], **kw)
    assert out.tolist() == plain.tolist()
    assert (out[0, width + 7:] == tok.pad_token_id).all() and out.shape[1] > width + 7  # row 0 stopped, others did not


def test_an_unsure_memory_drafts_less_and_changes_nothing(composed, parts, batch):
    """assistant_confidence_threshold stops drafting where the memory's top token is below it."""
    kw = dict(max_new_tokens=16, eos_token_id=[], assistant_model=parts[1], num_assistant_tokens=6,
              num_assistant_tokens_schedule="constant", return_dict_in_generate=True)
    ids = {k: v[:1] for k, v in batch.items()}
    every = composed.generate(**ids, **kw)
    unsure = composed.generate(**ids, assistant_confidence_threshold=0.5, **kw)
    never = composed.generate(**ids, assistant_confidence_threshold=1.0, **kw)  # no token is that sure
    assert unsure.sequences.tolist() == every.sequences.tolist() == never.sequences.tolist()
    assert never.extra["drafted"] == 0 and never.extra["rounds"] == 16  # plain decoding, one token a round
    assert 0 < unsure.extra["drafted"] < every.extra["drafted"]


def test_batched_sampling_draws_from_the_mixture_with_a_sure_memory(tok, parts, batch):
    """A memory at weight 1 is the mixture: every sampled draft is kept in every row."""
    only_memory = compose(parts[0], [(parts[1], tok)], [1.0], tokenizer=tok)
    out = only_memory.generate(**batch, max_new_tokens=12, eos_token_id=[], do_sample=True, assistant_model=parts[1],
                               num_assistant_tokens=5, num_assistant_tokens_schedule="constant",
                               generator=torch.Generator().manual_seed(0), return_dict_in_generate=True)
    assert out.extra["accepted"] == out.extra["drafted"] > 0
    assert out.sequences.shape == (3, batch["input_ids"].shape[1] + 12)


def test_sampling_with_no_draft_sure_enough_decodes_plainly(composed, parts, batch):
    """A confidence threshold no token reaches: every round drafts nothing, sampling still works."""
    out = composed.generate(**batch, max_new_tokens=6, eos_token_id=[], do_sample=True, assistant_model=parts[1],
                            assistant_confidence_threshold=1.0, generator=torch.Generator().manual_seed(0),
                            return_dict_in_generate=True)
    assert out.extra["drafted"] == 0 and out.extra["rounds"] == 6
    assert out.sequences.shape == (3, batch["input_ids"].shape[1] + 6)


def test_drafting_refuses_a_routed_composition(composed, parts, batch):
    """A router's per-token weights are not what the drafting loop mixes with: refused, not ignored."""
    composed.router = torch.nn.Identity()  # any router: the loop never reads it
    try:
        with pytest.raises(ValueError, match="router"):
            composed.generate(**batch, max_new_tokens=2, assistant_model=parts[1])
        composed.use_router = False  # the opt-out: fixed weights, drafting allowed
        out = composed.generate(**batch, max_new_tokens=2, eos_token_id=[], assistant_model=parts[1])
        assert out.shape[1] == batch["input_ids"].shape[1] + 2
    finally:
        composed.router, composed.use_router = None, True
