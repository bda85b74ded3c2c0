"""Assisted decoding: the memory drafts, the mixture decides. Greedy output equals plain greedy
decoding token for token; the sampling rule emits tokens distributed as the mixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_lms import LICENSES, gpt2, real_text, train_tokenizer

from memreg.decode.assisted import crop_cache, lookup_drafts, pick_greedy, pick_sampled, residual
from memreg.compose import compose


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(real_text(LICENSES))


@pytest.fixture(scope="module")
def parts(tok):
    """float64 models: a (K+1)-token forward and K+1 one-token forwards then agree to ~1e-15,
    so greedy ties cannot flip between the assisted and the plain loop."""
    v = len(tok)
    base = gpt2(v, 0, layers=3, width=48).double()
    memory = gpt2(v, 1, layers=1).double()
    outside = gpt2(v, 2, layers=1).double()
    return base, memory, outside


@pytest.fixture(scope="module")
def composed(tok, parts):
    base, memory, _ = parts
    return compose(base, [(memory, tok)], [0.4], tokenizer=tok)


@pytest.fixture(scope="module")
def prompts(tok):
    text = Path(LICENSES[-1]).read_text()
    return [tok([p], return_tensors="pt") for p in (text[100:140], text[500:503], text[900:990])]


def _plain_and_assisted(composed, enc, assistant, **kw):
    plain = composed.generate(enc["input_ids"], enc["attention_mask"], **kw)
    out = composed.generate(enc["input_ids"], enc["attention_mask"], assistant_model=assistant,
                            return_dict_in_generate=True, **kw)
    return plain, out


@pytest.mark.slow  # plain and assisted greedy decoding of long completions, for each drafting setting
@pytest.mark.parametrize("k,schedule", [(1, "constant"), (3, "heuristic"), (7, "constant")])
def test_greedy_with_the_memory_drafting_equals_plain_greedy(composed, parts, prompts, k, schedule):
    for enc in prompts:
        plain, out = _plain_and_assisted(composed, enc, parts[1], max_new_tokens=24, num_assistant_tokens=k,
                                         num_assistant_tokens_schedule=schedule)
        assert out.sequences.tolist() == plain.tolist()
        assert out.extra["drafted"] > 0 and 0 <= out.extra["accepted"] <= out.extra["drafted"]


@pytest.mark.slow  # plain and assisted greedy decoding of a long completion
def test_greedy_with_processors_and_an_outside_drafter_equals_plain(composed, parts, prompts):
    kw = dict(max_new_tokens=20, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=5)
    for enc in prompts:
        plain, out = _plain_and_assisted(composed, enc, parts[2], **kw)
        assert out.sequences.tolist() == plain.tolist()


@pytest.mark.slow  # plain and assisted greedy decoding of a long completion
def test_greedy_with_prompt_lookup_equals_plain_greedy(composed, tok):
    text = Path(LICENSES[0]).read_text()[:300]
    enc = tok([text + text[:60]], return_tensors="pt")  # the end repeats the start: lookup finds drafts
    assert enc["input_ids"].shape[1] + 24 <= 256  # the tiny models' positions
    for k, n in ((3, 2), (10, 1), (4, 3)):
        plain = composed.generate(**enc, max_new_tokens=24, output_scores=True, return_dict_in_generate=True)
        out = composed.generate(**enc, max_new_tokens=24, prompt_lookup_num_tokens=k, max_matching_ngram_size=n,
                                output_scores=True, return_dict_in_generate=True)
        assert out.sequences.tolist() == plain.sequences.tolist()
        for a, b in zip(out.scores, plain.scores):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
        assert out.extra["accepted"] > 0  # drafts were found and kept
    with pytest.raises(ValueError, match="not both"):
        composed.generate(**enc, prompt_lookup_num_tokens=3, assistant_model=composed.names[0])


def test_lookup_drafts_continue_the_latest_earlier_occurrence():
    ids = [5, 6, 7, 8, 9, 5, 6, 1, 2, 5, 6]
    assert lookup_drafts(ids, 3, 2) == [1, 2, 5]  # "5 6" last seen before at 5..6 -> 1 2 5
    assert lookup_drafts(ids, 10, 2) == [1, 2, 5, 6]
    assert lookup_drafts([1, 2, 3, 4], 3, 2) == []  # nothing repeats
    assert lookup_drafts([3, 1, 2, 4, 3], 2, 3) == [1, 2]  # falls back to a 1-gram
    assert lookup_drafts([7], 3, 2) == []


@pytest.mark.slow  # assisted and plain decoding
def test_the_memory_can_be_named_and_its_scores_match_plain_decoding(composed, prompts):
    enc = prompts[0]
    plain = composed.generate(**enc, max_new_tokens=10, output_scores=True, return_dict_in_generate=True)
    out = composed.generate(**enc, max_new_tokens=10, output_scores=True, return_dict_in_generate=True,
                            assistant_model=composed.names[0], num_assistant_tokens=4)
    assert out.sequences.tolist() == plain.sequences.tolist()
    assert len(out.scores) == len(plain.scores) == 10
    for a, b in zip(out.scores, plain.scores):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.slow  # assisted and plain decoding per row
def test_per_row_weights_reach_the_drafting_path(composed, parts, prompts):
    """weights= (1, M) with drafting equals plain decoding at those weights; min_p is read too."""
    enc = prompts[0]
    kw = dict(max_new_tokens=12, min_p=0.02)
    for row in ([0.0], [0.9]):
        composed.set_weights(row)
        try:
            plain = composed.generate(**enc, **kw)
        finally:
            composed.set_weights([0.4])
        drafted = composed.generate(**enc, assistant_model=parts[1], weights=torch.tensor([row]), **kw)
        assert drafted.tolist() == plain.tolist()
    with pytest.raises(TypeError, match="num_beam_groups"):
        composed.generate(**enc, assistant_model=parts[1], num_beam_groups=2, max_new_tokens=2)


@pytest.mark.slow  # assisted and plain decoding
def test_a_memory_at_weight_one_has_every_draft_accepted(tok, parts, prompts):
    base, memory, _ = parts
    only_memory = compose(base, [(memory, tok)], [1.0], tokenizer=tok)
    for sample in (False, True):
        out = only_memory.generate(**prompts[2], max_new_tokens=16, do_sample=sample, assistant_model=memory,
                                   num_assistant_tokens=5, num_assistant_tokens_schedule="constant",
                                   generator=torch.Generator().manual_seed(0), return_dict_in_generate=True)
        # rounds of 5 drafts + 1 token: 6 + 6, then 3 drafts + 1 to stop at 16 new tokens
        assert out.extra["accepted"] == out.extra["drafted"] == 13 and out.extra["rounds"] == 3
        assert out.sequences.shape[1] == prompts[2]["input_ids"].shape[1] + 16


@pytest.mark.slow  # assisted and plain decoding
def test_stop_strings_and_streamer_behave_as_in_plain_decoding(composed, parts, tok, prompts):
    from transformers import TextStreamer

    class Collect(TextStreamer):
        def __init__(self):
            self.parts = []

        def put(self, value):
            self.parts.append(value.reshape(-1).tolist())

        def end(self):
            self.parts.append("end")

    enc = prompts[0]
    free = composed.generate(**enc, max_new_tokens=20)
    stop = tok.decode(free[0, enc["input_ids"].shape[1] + 3 : enc["input_ids"].shape[1] + 5])
    streamer = Collect()
    plain, out = _plain_and_assisted(composed, enc, parts[1], max_new_tokens=20, stop_strings=stop, tokenizer=tok)
    assisted = composed.generate(**enc, max_new_tokens=20, stop_strings=stop, tokenizer=tok, streamer=streamer,
                                 assistant_model=parts[1])
    assert out.sequences.tolist() == plain.tolist() == assisted.tolist()
    assert plain.shape[1] < free.shape[1]  # the stop string really stopped it
    streamed = [t for p in streamer.parts[1:-1] for t in p]
    assert streamer.parts[-1] == "end" and streamed == assisted[0, enc["input_ids"].shape[1]:].tolist()


def test_assisted_decoding_refuses_what_it_cannot_do(composed, parts, tok, prompts):
    right = tok(["a licence", "the software is provided as is"], return_tensors="pt", padding=True, padding_side="right")
    with pytest.raises(ValueError, match="left-padded"):
        composed.generate(**right, assistant_model=parts[1])
    batch = tok(["a licence", "the software"], return_tensors="pt", padding=True, padding_side="left")
    with pytest.raises(ValueError, match="one prompt at a time"):
        composed.generate(**batch, assistant_model=parts[1], output_scores=True, return_dict_in_generate=True)
    with pytest.raises(ValueError, match="probability"):
        composed.generate(**prompts[0], assistant_model=parts[1], assistant_confidence_threshold=1.5)
    with pytest.raises(ValueError, match="base cannot draft"):
        composed.generate(**prompts[0], assistant_model=parts[0])
    with pytest.raises(ValueError, match="not one of the memories"):
        composed.generate(**prompts[0], assistant_model="no-such-memory")
    with pytest.raises(ValueError, match="num_beams=1"):
        composed.generate(**prompts[0], assistant_model=parts[1], num_beams=2)
    with pytest.raises(ValueError, match="schedule"):
        composed.generate(**prompts[0], assistant_model=parts[1], num_assistant_tokens_schedule="dynamic")


# ----------------------------------------------------------------------------- the picking rules
def test_pick_greedy_keeps_drafts_up_to_the_first_disagreement():
    p = torch.tensor([[0.0, 5.0, 1.0], [4.0, 0.0, 1.0], [0.0, 0.0, 9.0]])  # argmax 1, 0, 2
    assert pick_greedy(p, [1, 0]) == (2, 2)
    assert pick_greedy(p, [1, 2]) == (1, 0)
    assert pick_greedy(p, [0, 0]) == (0, 1)


probabilities = st.lists(st.floats(0.01, 1.0), min_size=2, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_accepting_with_min_one_p_over_q_then_the_residual_gives_p(data):
    """The analytic law of one speculative step: q(x) min(1, p/q) + P(reject) residual(x) = p(x)."""
    raw_p = data.draw(probabilities)
    raw_q = data.draw(st.lists(st.floats(0.01, 1.0), min_size=len(raw_p), max_size=len(raw_p)))
    p = torch.tensor(raw_p, dtype=torch.float64)
    q = torch.tensor(raw_q, dtype=torch.float64)
    p, q = p / p.sum(), q / q.sum()
    kept = q * torch.minimum(torch.ones_like(p), p / q)
    law = kept + (1 - kept.sum()) * residual(p, q)
    torch.testing.assert_close(law, p, rtol=0, atol=1e-12)


@pytest.mark.slow  # draws enough samples for a statistical test
def test_pick_sampled_emits_tokens_distributed_as_the_mixture_not_the_drafter():
    p = torch.tensor([0.5, 0.3, 0.1, 0.1], dtype=torch.float64)
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    g = torch.Generator().manual_seed(1234)
    n = 20_000
    counts = torch.zeros(4, dtype=torch.float64)
    p_scores, q_scores = torch.stack([p.log(), p.log()]), q.log()[None]
    for _ in range(n):
        draft = int(torch.multinomial(q, 1, generator=g))
        kept, tok = pick_sampled(p_scores, q_scores, [draft], g)
        counts[draft if kept == 1 else tok] += 1  # the first emitted token
    freq = counts / n
    assert (freq - p).abs().sum() < 0.03  # sampling noise: ~0.01 total variation at n = 20,000
    assert (freq - q).abs().sum() > 0.5


@pytest.mark.slow  # draws enough samples for a statistical test
def test_pick_sampled_with_a_point_mass_draft_gives_the_mixture():
    """Prompt lookup proposes one fixed token (q is a point mass): kept with probability p(x)."""
    p = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    q_scores = torch.tensor([[-torch.inf, -torch.inf, 0.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    counts = torch.zeros(3, dtype=torch.float64)
    for _ in range(10_000):
        kept, tok = pick_sampled(torch.stack([p.log(), p.log()]), q_scores, [2], g)
        counts[2 if kept else tok] += 1
    assert (counts / 10_000 - p).abs().sum() < 0.04


# ----------------------------------------------------------------------------- cache cropping
def test_crop_cache_removes_the_last_positions_of_any_cache_kind(tok, parts):
    from transformers import DynamicCache

    base = parts[0]
    ids = torch.arange(1, 9)[None]
    cache = base(ids, use_cache=True).past_key_values
    if not isinstance(cache, DynamicCache):  # transformers 4.x returns tuples unless given a Cache
        cache = DynamicCache.from_legacy_cache(cache)
    assert cache.get_seq_length() == 8
    assert crop_cache(cache, 3).get_seq_length() == 5
    legacy = tuple((torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 8, 4)) for _ in range(2))
    assert crop_cache(legacy, 3)[1][0].shape == (1, 2, 5, 4)

    class OldCache:  # transformers 4.x: crop(max_length) keeps that many; a negative one removes
        def __init__(self):
            self.length = 8

        def get_seq_length(self):
            return self.length

        def crop(self, max_length):
            self.length = max_length if max_length >= 0 else self.length + max_length

    assert crop_cache(OldCache(), 3).length == 5
