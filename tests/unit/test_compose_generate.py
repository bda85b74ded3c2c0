"""The composition's generate (transformers' own): padded batches decode like single prompts; sampling
is seeded; streaming works; options equal the base's own generate at memory weight 0."""

from __future__ import annotations

from pathlib import Path

import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import transformers  # noqa: F401  (a missing dependency must fail, not skip)

from tiny_lms import LICENSES, gpt2, llama

from memreg.compose import compose


@pytest.fixture(scope="module")
def composed(tok):
    v = len(tok)
    return compose(gpt2(v, 0), [(llama(v, 1, rows=v + 5), tok), (gpt2(v, 2, layers=1), tok)], [0.35, 0.25], tokenizer=tok)


@pytest.fixture(scope="module")
def prompts():
    text = Path(LICENSES[-1]).read_text()
    return [text[100:140], text[500:515], text[900:990]]


def _strip(seq: torch.Tensor, pad: int, prompt_len: int) -> list[int]:
    """Generated ids without the trailing pads (prompt dropped)."""
    out = seq[prompt_len:].tolist()
    while out and out[-1] == pad:
        out.pop()
    return out


def _one_by_one(composed, tok, prompts, **kw):
    rows = []
    for p in prompts:
        enc = tok([p], return_tensors="pt")
        out = composed.generate(enc["input_ids"], enc["attention_mask"], return_dict_in_generate=True, **kw)
        rows.append((out, enc["input_ids"].shape[1]))
    return rows


@pytest.mark.slow  # a batch and one run per row
def test_greedy_padded_batch_equals_one_by_one(composed, tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    assert (enc["attention_mask"] == 0).any()  # really padded
    kw = dict(max_new_tokens=8, output_scores=True)
    batch = composed.generate(enc["input_ids"], enc["attention_mask"], return_dict_in_generate=True, **kw)
    width = enc["input_ids"].shape[1]
    pad = tok.pad_token_id
    for i, (single, plen) in enumerate(_one_by_one(composed, tok, prompts, **kw)):
        assert _strip(batch.sequences[i], pad, width) == _strip(single.sequences[0], pad, plen)
        for step, s in enumerate(single.scores):
            tok_id = single.sequences[0, plen + step]
            torch.testing.assert_close(batch.scores[step][i, tok_id], s[0, tok_id], rtol=1e-5, atol=1e-9)


@pytest.mark.slow  # beam search, batched and per row
def test_beam_padded_batch_equals_one_by_one(composed, tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    kw = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, output_scores=True)
    batch = composed.generate(enc["input_ids"], enc["attention_mask"], return_dict_in_generate=True, **kw)
    width = enc["input_ids"].shape[1]
    pad = tok.pad_token_id
    assert batch.sequences.shape[0] == 2 * len(prompts)
    for i, (single, plen) in enumerate(_one_by_one(composed, tok, prompts, **kw)):
        for r in range(2):
            assert _strip(batch.sequences[2 * i + r], pad, width) == _strip(single.sequences[r], pad, plen)
            assert float(batch.sequences_scores[2 * i + r]) == pytest.approx(float(single.sequences_scores[r]), rel=1e-6)


@pytest.mark.slow  # beam search and greedy
def test_beam_search_finds_at_least_the_greedy_score(composed, tok, prompts):
    enc = tok(prompts[:1], return_tensors="pt")
    n = 6
    greedy = composed.generate(**enc, max_new_tokens=n)
    beam = composed.generate(**enc, max_new_tokens=n, num_beams=4, return_dict_in_generate=True, length_penalty=0.0,
                             output_scores=True)

    plen = enc["input_ids"].shape[1]

    def score(seq):  # sum of log p over the generated tokens, up to and with the end token
        gen = _strip(seq, tok.pad_token_id, plen)
        seq = seq[: plen + len(gen)]
        logp = composed(seq[None]).logits[0, :-1].gather(-1, seq[1:, None]).squeeze(-1)
        return float(logp[-len(gen) :].sum())

    with torch.no_grad():
        assert score(beam.sequences[0]) >= score(greedy[0]) - 1e-9
        assert float(beam.sequences_scores[0]) == pytest.approx(score(beam.sequences[0]), rel=1e-6)


@pytest.mark.slow  # samples several times
def test_sampling_with_a_fixed_seed_is_reproducible(composed, tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    kw = dict(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=40, top_p=0.9)
    torch.manual_seed(1234)
    a = composed.generate(**enc, **kw)
    torch.manual_seed(1234)
    b = composed.generate(**enc, **kw)
    g = torch.Generator().manual_seed(99)
    c = composed.generate(**enc, generator=g, **kw)
    d = composed.generate(**enc, generator=torch.Generator().manual_seed(99), **kw)
    assert torch.equal(a, b) and torch.equal(c, d)
    assert not torch.equal(a, c)  # another seed draws other tokens (30 draws from wide distributions)


@pytest.mark.slow  # decodes without a cache
def test_without_cache_gives_the_same_tokens(composed, tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    a = composed.generate(**enc, max_new_tokens=5)
    b = composed.generate(**enc, max_new_tokens=5, use_cache=False)
    assert torch.equal(a, b)


def test_text_streamer_prints_the_generated_text(composed, tok, prompts, capsys):
    from transformers import TextStreamer

    enc = tok(prompts[:1], return_tensors="pt")
    out = composed.generate(**enc, max_new_tokens=12, streamer=TextStreamer(tok, skip_prompt=True))
    printed = capsys.readouterr().out
    expected = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=False)
    assert printed.strip() == expected.strip()
    assert printed.strip()


@pytest.mark.slow  # a batched generate and one run per row
def test_eos_stops_and_pads(composed, tok, prompts):
    enc = tok(prompts[:2], return_tensors="pt", padding=True, padding_side="left")
    first = composed.generate(**enc, max_new_tokens=1)[:, -1]
    eos = int(first[0])  # pretend the first row's next token is the end: that row stops at once
    out = composed.generate(**enc, max_new_tokens=6, eos_token_id=eos, pad_token_id=1)
    width = enc["input_ids"].shape[1]
    assert out[0, width] == eos and (out[0, width + 1 :] == 1).all()


def test_bad_arguments_are_refused(composed, tok, prompts):
    enc = tok(prompts[:1], return_tensors="pt")
    with pytest.raises(ValueError, match="temperature"):
        composed.generate(**enc, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="trust_remote_code"):  # transformers 5 moved contrastive search to the Hub
        composed.generate(**enc, penalty_alpha=0.6, top_k=4)
    with pytest.raises(ValueError, match="not used by the model.*weigths"):  # a typo is named by transformers
        composed.generate(**enc, weigths=[[0.1, 0.1]])


# transformers' decoding options, checked against transformers itself ----------------------------
@pytest.fixture(scope="module")
def zero(tok):
    """Every memory at weight 0: the composed model must decode exactly as its base."""
    v = len(tok)
    base = gpt2(v, 0)
    return base, compose(base, [(gpt2(v, 2, layers=1), tok)], [0.0], tokenizer=tok)


@pytest.mark.parametrize("options", [
    dict(no_repeat_ngram_size=1),
    dict(min_new_tokens=9),
    dict(bad_words_ids=[[98], [66, 74]]),  # (the eos token is never a bad word in transformers)
    dict(no_repeat_ngram_size=3, min_new_tokens=4, bad_words_ids=[[216]]),
])
@pytest.mark.slow  # two generate runs for each set of decoding options
def test_decoding_options_equal_base_generate_at_weight_zero(zero, tok, prompts, options):
    base, composed = zero
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    plain = dict(max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=24)
    want = base.generate(**enc, **plain, **options)
    got = composed.generate(enc["input_ids"], enc["attention_mask"], **plain, **options)
    assert torch.equal(got, want)
    without = composed.generate(enc["input_ids"], enc["attention_mask"], **plain)
    assert torch.equal(without, base.generate(**enc, **plain))
    assert not torch.equal(got, without)  # the option changed the output: the test can fail


def test_generation_config_and_stop_strings_equal_base_generate(zero, tok, prompts):
    from transformers import GenerationConfig

    base, composed = zero
    enc = tok(prompts[:1], return_tensors="pt")
    free = composed.generate(enc["input_ids"], max_new_tokens=12)
    stop = tok.decode(free[0, enc["input_ids"].shape[1] + 3 : enc["input_ids"].shape[1] + 5])  # text of tokens 4-5
    cfg = GenerationConfig(max_new_tokens=12, no_repeat_ngram_size=2, stop_strings=[stop], do_sample=False,
                           pad_token_id=tok.pad_token_id)
    want = base.generate(**enc, generation_config=cfg, tokenizer=tok)
    got = composed.generate(enc["input_ids"], generation_config=cfg, tokenizer=tok)
    assert torch.equal(got, want)
    assert got.shape[1] < free.shape[1] and stop in tok.decode(got[0, enc["input_ids"].shape[1]:])
    # keyword arguments override the config, as in transformers
    assert composed.generate(enc["input_ids"], generation_config=cfg, tokenizer=tok, max_new_tokens=2).shape[1] \
        == enc["input_ids"].shape[1] + 2


def test_repetition_penalty_scales_the_mixture_log_probs(composed, tok, prompts):
    enc = tok(prompts[:1], return_tensors="pt")
    out = composed.generate(enc["input_ids"], max_new_tokens=12, repetition_penalty=1e6)
    seen = enc["input_ids"][0].tolist()
    for t in out[0, enc["input_ids"].shape[1]:].tolist():
        assert t not in seen  # a huge penalty on log-probs (all negative) bans every token seen so far
        seen.append(t)


def test_options_transformers_refuses_are_refused_by_transformers(composed, tok, prompts):
    from transformers import GenerationConfig

    enc = tok(prompts[:1], return_tensors="pt")
    with pytest.raises(ValueError, match="Group Beam Search"):  # moved to the Hub in transformers 5
        composed.generate(enc["input_ids"], generation_config=GenerationConfig(num_beams=4, num_beam_groups=2,
                                                                               diversity_penalty=0.5))
    with pytest.raises(ValueError, match="cache_implementation='static'"):  # one dynamic cache per member
        composed.generate(enc["input_ids"], max_new_tokens=2, cache_implementation="static")
    from memreg.decode.options import criteria as _criteria

    with pytest.raises(ValueError, match="tokenizer"):
        _criteria(None, ["stop"], None)  # stop strings need a tokenizer (the composed model may have none)


def test_text_generation_pipeline_runs_the_composed_model(composed, tok, prompts):
    from transformers import pipeline

    pipe = pipeline("text-generation", model=composed, tokenizer=tok)
    got = pipe(prompts[0], max_new_tokens=6, do_sample=False)[0]["generated_text"]
    enc = tok([prompts[0]], return_tensors="pt")
    want = tok.decode(composed.generate(enc["input_ids"], max_new_tokens=6)[0], skip_special_tokens=True)
    assert got == want and len(got) > len(prompts[0])


def test_token_type_ids_reach_the_members_that_take_them(zero, tok, prompts):
    base, composed = zero
    enc = tok(prompts[:1], return_tensors="pt")
    types = torch.ones_like(enc["input_ids"])  # GPT-2 adds wte(token_type_ids): they change its output
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    got = composed.generate(enc["input_ids"], token_type_ids=types, **kw)
    assert torch.equal(got, base.generate(enc["input_ids"], token_type_ids=types, **kw))
    with torch.no_grad():
        with_types = composed(enc["input_ids"], token_type_ids=types).logits
        without = composed(enc["input_ids"]).logits
    assert not torch.allclose(with_types, without)  # really passed, not dropped
