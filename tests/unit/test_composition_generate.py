"""transformers' own generate on a composition: every comparable option equals the base's own
generate at memory weight 0; per-row weights give each prompt its own mixture; the text-generation
pipeline runs it with beams and logs no "not supported" line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tiny_lms import LICENSES, gpt2, llama

from memreg.compose import compose
from memreg.mixture import InvalidWeightsError


@pytest.fixture(scope="module")
def parts(tok):
    v = len(tok)
    return gpt2(v, 0), llama(v, 1, rows=v + 5), gpt2(v, 2, layers=1)


@pytest.fixture(scope="module")
def zero(tok, parts):
    """Both memories at weight 0: the composition must decode exactly as its base."""
    base, law, code = parts
    return compose(base, [(law, tok), (code, tok)], [0.0, 0.0], tokenizer=tok)


@pytest.fixture(scope="module")
def mixed(tok, parts):
    base, law, code = parts
    return compose(base, [(law, tok), (code, tok)], [0.35, 0.25], tokenizer=tok)


@pytest.fixture(scope="module")
def enc(tok):
    text = Path(LICENSES[-1]).read_text()
    return tok([text[100:140], text[500:515], text[900:990]], return_tensors="pt", padding=True, padding_side="left")


def _seeded(model, enc, seed, **kw):
    torch.manual_seed(seed)
    return model.generate(**enc, **kw)


PLAIN = dict(max_new_tokens=8, pad_token_id=1)


@pytest.mark.parametrize("options", [
    dict(do_sample=False),
    dict(do_sample=False, num_beams=3),
    dict(do_sample=False, num_beams=3, num_return_sequences=2, length_penalty=0.5),
    dict(do_sample=True, min_p=0.05),
    dict(do_sample=True, typical_p=0.8),
    dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.7),
    dict(do_sample=True, num_return_sequences=2),
])
@pytest.mark.slow  # two generate runs for each set of decoding options
def test_options_equal_the_bases_own_generate_at_weight_zero(zero, parts, enc, options):
    base = parts[0]
    want = _seeded(base, enc, 7, **PLAIN, **options)
    got = _seeded(zero, enc, 7, **PLAIN, **options)
    assert torch.equal(got, want)


@pytest.mark.slow  # two generate runs
def test_output_dicts_scores_and_logits_match_the_base(zero, parts, enc):
    base = parts[0]
    kw = dict(**PLAIN, do_sample=False, min_p=0.1, return_dict_in_generate=True, output_scores=True, output_logits=True)
    want, got = base.generate(**enc, **kw), zero.generate(**enc, **kw)
    assert torch.equal(got.sequences, want.sequences)
    assert len(got.logits) == len(want.logits) == 8 and len(got.scores) == 8
    for g, w in zip(got.logits, want.logits):  # logits: the mixture's log-probs, the base's raw logits
        torch.testing.assert_close(g, torch.log_softmax(w.double(), -1).float(), rtol=1e-5, atol=1e-5)
    beams = zero.generate(**enc, **PLAIN, num_beams=2, return_dict_in_generate=True, output_scores=True)
    assert beams.sequences_scores.shape == (3,) and beams.beam_indices is not None


@pytest.mark.slow  # several generate runs
def test_the_models_own_generation_config_is_accepted(zero, parts, enc):
    cfg = zero.generation_config
    assert cfg.eos_token_id == parts[0].generation_config.eos_token_id
    out = zero.generate(**enc, generation_config=cfg, max_new_tokens=4)
    assert out.shape == (3, enc["input_ids"].shape[1] + 4)
    from_base = zero.generate(**enc, generation_config=parts[0].generation_config, max_new_tokens=4)  # the base's own
    assert torch.equal(from_base, parts[0].generate(**enc, generation_config=parts[0].generation_config, max_new_tokens=4))


@pytest.mark.slow  # generate runs compared
def test_repetition_penalty_acts_on_the_mixture(mixed, enc):
    out = mixed.generate(**enc, max_new_tokens=10, repetition_penalty=1e6, do_sample=False)
    for row in range(out.shape[0]):
        prompt = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
        new = out[row, enc["input_ids"].shape[1]:].tolist()
        new = new[: new.index(0) + 1] if 0 in new else new  # up to the end token (pads follow it)
        # a huge penalty on log-probs (all negative) bans every token seen so far
        assert not set(new) & set(prompt) and len(set(new)) == len(new)


def test_streamer_yields_the_generated_text(mixed, tok, enc):
    from transformers import TextIteratorStreamer

    one = {k: v[:1, -20:] for k, v in enc.items()}
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    out = mixed.generate(**one, max_new_tokens=10, streamer=streamer)
    assert "".join(streamer) == tok.decode(out[0, one["input_ids"].shape[1]:])


# ------------------------------------------------------------------------------ per-row weights
@pytest.mark.slow  # a batch and one run per row
def test_per_row_weights_equal_each_row_run_alone(mixed, parts, tok, enc):
    rows = torch.tensor([[0.35, 0.25], [0.0, 0.0], [0.9, 0.1]])
    with torch.no_grad():
        batch = mixed(**enc, weights=rows).logits
        for i in range(3):
            mixed.set_weights(rows[i].tolist())
            alone_in_batch = mixed(**enc).logits[i]
            one = {k: v[i:i + 1] for k, v in enc.items()}
            alone = mixed(**one).logits[0]
            assert torch.equal(batch[i], alone_in_batch)  # the same code path: bit for bit
            keep = enc["attention_mask"][i].bool()
            torch.testing.assert_close(batch[i][keep], alone[keep], rtol=1e-9, atol=1e-9)
        mixed.set_weights([0.35, 0.25])
        # left padding: positions count real tokens, as generate (and the composition) make them
        pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        base = torch.log_softmax(parts[0](**enc, position_ids=pos).logits.double(), -1)
    assert torch.equal(batch[1], base[1])  # all-zero memory weights: the base, exactly


@pytest.mark.slow  # a batched generate and one run per row
def test_generate_with_per_row_weights_equals_separate_runs(mixed, enc):
    rows = torch.tensor([[0.35, 0.25], [0.0, 0.0], [0.0, 1.0]])
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=1)
    batch = mixed.generate(**enc, weights=rows, **kw)
    beams = mixed.generate(**enc, weights=rows, num_beams=2, **kw)
    for i in range(3):
        mixed.set_weights(rows[i].tolist())
        try:
            assert torch.equal(batch[i], mixed.generate(**enc, **kw)[i])
            assert torch.equal(beams[i], mixed.generate(**enc, num_beams=2, **kw)[i])
        finally:
            mixed.set_weights([0.35, 0.25])


def test_per_row_weights_are_checked(mixed, enc):
    with pytest.raises(InvalidWeightsError, match=r"weights\[2\] sum to 1.2"):
        mixed(**enc, weights=torch.tensor([[0.1, 0.1], [0.0, 0.0], [0.6, 0.6]]))
    with pytest.raises(InvalidWeightsError, match=r"\(3, 2\)"):
        mixed(**enc, weights=torch.tensor([[0.1, 0.1]] * 2))
    with pytest.raises(InvalidWeightsError, match=r"weights\[0, 1\] = -0.1"):
        mixed.generate(**enc, weights=torch.tensor([[0.1, -0.1]] * 3), max_new_tokens=2)


# ------------------------------------------------------------------------------ pipeline
def test_text_generation_pipeline_with_beams_logs_no_not_supported(mixed, tok, enc):
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    hf_logging.get_logger().addHandler(handler)
    try:
        pipe = pipeline("text-generation", model=mixed, tokenizer=tok)
        prompt = tok.decode(enc["input_ids"][0][enc["attention_mask"][0].bool()])
        got = pipe(prompt, num_beams=2, max_new_tokens=6, do_sample=False)[0]["generated_text"]
    finally:
        hf_logging.get_logger().removeHandler(handler)
    assert not [r for r in records if "not supported" in r], records
    ids = tok([prompt], return_tensors="pt")
    want = tok.decode(mixed.generate(**ids, num_beams=2, max_new_tokens=6, do_sample=False)[0], skip_special_tokens=True)
    assert got == want and len(got) > len(prompt)
