"""No silent drops: every forward/generate argument of a composition is honoured or refused by name;
right padding warns as transformers does; the context limit is the smallest member's, so long text
never ends in an IndexError (forward, generate, fit_weights, compose(weights="auto"), memreg eval)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tiny_lms import LICENSES, gpt2, llama, save_package

from conftest import memreg_in_process
from memreg.compose import ContextTooLongError, compose, fit_weights


@pytest.fixture(scope="module")
def parts(tok):
    v = len(tok)
    return gpt2(v, 0), llama(v, 1, rows=v + 5)


@pytest.fixture(scope="module")
def zero(tok, parts):
    return compose(parts[0], [(parts[1], tok)], [0.0], tokenizer=tok)


@pytest.fixture(scope="module")
def mixed(tok, parts):
    return compose(parts[0], [(parts[1], tok)], [0.4], tokenizer=tok)


@pytest.fixture(scope="module")
def ids(tok):
    return tok([Path(LICENSES[0]).read_text()[500:600]], return_tensors="pt")["input_ids"][:, :16]


@pytest.fixture(scope="module")
def long_text() -> str:
    return Path(LICENSES[1]).read_text()[:6000]  # well over the tiny models' 256 positions


def _base_log_probs(base, ids, **kw):
    return torch.log_softmax(base(ids, **kw).logits.double(), -1)


@torch.no_grad()
def test_position_ids_and_attention_mask_reach_the_members(zero, parts, ids):
    shifted = torch.arange(10, 10 + ids.shape[1])[None]
    got = zero(ids, position_ids=shifted).logits
    assert torch.equal(got, _base_log_probs(parts[0], ids, position_ids=shifted))
    assert not torch.allclose(got, zero(ids).logits)  # the positions were used, not dropped
    mask = torch.ones_like(ids)
    mask[:, 3] = 0  # a hole in the mask changes what later tokens see
    pos = torch.arange(ids.shape[1])[None]
    assert torch.equal(zero(ids, attention_mask=mask, position_ids=pos).logits,
                       _base_log_probs(parts[0], ids, attention_mask=mask, position_ids=pos))


@torch.no_grad()
def test_attentions_and_hidden_states_come_back_per_member(mixed, parts, ids):
    out = mixed(ids, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == len(out.hidden_states) == 2  # base, memory
    for member, attn, hidden in zip(parts, out.attentions, out.hidden_states):
        own = member(ids, output_attentions=True, output_hidden_states=True)
        assert len(attn) == len(own.attentions) and len(hidden) == len(own.hidden_states)
        assert torch.equal(hidden[-1], own.hidden_states[-1])
    gen = mixed.generate(ids, max_new_tokens=2, output_attentions=True, output_hidden_states=True,
                         return_dict_in_generate=True)
    assert len(gen.attentions) == 2 and len(gen.attentions[0]) == 2  # steps, then members


@torch.no_grad()
def test_return_dict_false_gives_a_tuple_and_out0_is_the_logits(mixed, ids):
    out = mixed(ids)
    assert torch.equal(out[0], out.logits)
    tup = mixed(ids, return_dict=False)
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.logits)
    with_loss = mixed(ids, labels=ids, return_dict=False)
    assert with_loss[0].ndim == 0 and torch.equal(with_loss[1], out.logits)  # loss first, as transformers


def test_what_cannot_be_honoured_is_refused_by_name(mixed, ids):
    with pytest.raises(TypeError, match="head_mask"):
        mixed(ids, head_mask=torch.ones(2))
    with pytest.raises(ValueError, match="inputs_embeds"):
        mixed(ids, inputs_embeds=torch.zeros(1, ids.shape[1], 4))
    with pytest.raises(TypeError, match="DynamicCache.*ComposedCache"):
        from transformers import DynamicCache

        mixed(ids, cache=DynamicCache())


def test_token_type_ids_are_refused_when_no_member_takes_them(tok, ids):
    v = len(tok)
    llamas = compose(llama(v, 3), [(llama(v, 4), tok)], [0.5], tokenizer=tok)
    with pytest.raises(TypeError, match="token_type_ids"):
        llamas(ids, token_type_ids=torch.zeros_like(ids))


def test_right_padding_warns_as_transformers_does(mixed, tok):
    from transformers.utils import logging as hf_logging

    text = Path(LICENSES[0]).read_text()
    enc = tok([text[:40], text[100:110]], return_tensors="pt", padding=True, padding_side="right")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    hf_logging.get_logger().addHandler(handler)
    try:
        mixed.generate(**enc, max_new_tokens=2, pad_token_id=1)
    finally:
        hf_logging.get_logger().removeHandler(handler)
    assert any("right-padding was detected" in r for r in records), records


# ------------------------------------------------------------------------------ the context limit
def test_the_context_limit_is_the_smallest_members(tok):
    v = len(tok)
    short = llama(v, 5)
    short.config.max_position_embeddings = 64
    lm = compose(gpt2(v, 0), [(short, tok)], [0.5], tokenizer=tok)
    assert lm.max_positions == 64 and lm.config.max_position_embeddings == 64
    with pytest.raises(ContextTooLongError, match="at most 64"):
        lm(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ContextTooLongError, match="at most 64"):
        lm.generate(torch.zeros(1, 60, dtype=torch.long), max_new_tokens=10, pad_token_id=1)


@pytest.mark.slow  # scores a long text window by window
def test_fit_weights_and_auto_weights_on_long_text_use_windows_within_the_limit(tok, parts, long_text):
    assert len(tok(long_text)["input_ids"]) > 1024  # longer than the old default window, and than 256
    lm = compose(parts[0], [(parts[1], tok)], [0.0], tokenizer=tok)
    fitted = fit_weights(lm, long_text)  # default windows: the members' 256 positions
    assert fitted.tokens == len(tok(long_text, add_special_tokens=False)["input_ids"]) - 1
    auto = compose(parts[0], [(parts[1], tok)], "auto", tokenizer=tok, held_out=long_text)
    assert auto.weights == pytest.approx(fitted.weights)
    with pytest.raises(ContextTooLongError, match="at most 256"):
        fit_weights(lm, long_text, context=1024)


@pytest.mark.slow
def test_memreg_eval_with_a_context_past_the_models_is_a_usage_error(tok, parts, long_text, tmp_path, monkeypatch,
                                                                     capsys):
    base = save_package(parts[0], tok, tmp_path / "base")
    law = save_package(parts[1], tok, tmp_path / "law")
    data = tmp_path / "held.txt"
    data.write_text(long_text)
    code, out, err = memreg_in_process(monkeypatch, capsys, "eval", str(base), "--data", str(data), "-m",
                                       f"{law}=0.3", "--context", "4096", "--quiet")
    assert code == 2 and "--context" in err and "256" in err and "IndexError" not in err + out
    code, out, _ = memreg_in_process(monkeypatch, capsys, "eval", str(base), "--data", str(data), "-m",
                                     f"{law}=0.3", "--quiet")
    assert code == 0 and "composed" in out  # the default window fits


# ------------------------------------------------------------------------------ the cache
@pytest.mark.slow  # decoding with the cache cropped, selected and repeated, compared step by step
@torch.no_grad()
def test_the_cache_crops_selects_and_repeats_every_member_in_step(mixed, ids):
    full = mixed(ids).logits
    out = mixed(ids[:, :10], use_cache=True)
    cache = out.cache
    assert [c.get_seq_length() for c in cache.members] == [10, 10]
    cache.crop(-3)  # as assisted decoding and a deferred stop check undo positions
    assert cache.get_seq_length() == 7 and [c.get_seq_length() for c in cache.members] == [7, 7]
    again = mixed(ids[:, 7:], cache=cache).logits
    torch.testing.assert_close(again, full[:, 7:], rtol=1e-9, atol=1e-9)
    rows = lambda: {layer.keys.shape[0] for c in cache.members for layer in c.layers}  # noqa: E731
    cache.batch_repeat_interleave(3)
    assert rows() == {3}
    cache.reorder_cache(torch.tensor([2, 0, 1]))
    cache.batch_select_indices(torch.tensor([1]))
    assert rows() == {1}
    cache.crop(-9)  # back to the first 7 positions, then the same continuation
    torch.testing.assert_close(mixed(ids[:, 7:], cache=cache).logits, full[:, 7:], rtol=1e-9, atol=1e-9)
