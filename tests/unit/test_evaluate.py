"""Sliding-window scoring: every token scored exactly once, with the context the window gives it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from memreg.evaluate import mixture_log_probs, target_log_probs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=97, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def _reference(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.as_tensor(ids)[None]).logits[0].double(), -1)
    return logp[torch.arange(len(ids) - 1), torch.as_tensor(ids[1:])].numpy()


@pytest.mark.parametrize("context, stride", [(16, 16), (16, 8), (16, 1), (17, 5), (64, 64)])
def test_every_token_scored_once(model, context, stride):
    ids = np.random.default_rng(1).integers(0, 97, size=50)
    out = target_log_probs(model, ids, context=context, stride=stride, batch_size=3)
    assert out.shape == (49,) and np.isfinite(out).all() and (out < 0).all()
    # the tokens of the first window see the same context as a forward over that window alone
    np.testing.assert_allclose(out[: context - 1], _reference(model, ids[:context]), rtol=1e-5)


def test_whole_sequence_in_one_window_equals_a_full_forward(model):
    ids = np.random.default_rng(2).integers(0, 97, size=40)
    np.testing.assert_allclose(target_log_probs(model, ids, context=64, stride=32), _reference(model, ids), rtol=1e-5)


def test_mixture_is_a_weighted_sum_of_probabilities():
    base, mem = np.log([0.5, 0.1]), np.log([0.2, 0.6])
    mixed = mixture_log_probs(base, [mem], [0.25])
    np.testing.assert_allclose(np.exp(mixed), 0.75 * np.exp(base) + 0.25 * np.exp(mem))
    assert math.isclose(float(mixture_log_probs(base, [mem], [1.0])[0]), float(mem[0]))


# --- issue 11, finding 1: context 1 looped forever; context 0 gave a confusing message -----------
from hypothesis import given, settings, strategies as st  # noqa: E402

from memreg.evaluate import sliding_windows  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(n=st.integers(2, 400), context=st.integers(2, 64), data=st.data())
def test_sliding_windows_terminate_and_score_each_target_once(n, context, data):
    stride = data.draw(st.integers(1, context))
    windows = sliding_windows(n, context=context, stride=stride)
    assert len(windows) <= n  # every window advances: the loop is bounded by the token count
    scored = [t for s, e, first in windows for t in range(first, e)]
    assert scored == list(range(1, n))  # every target 1 .. n-1 exactly once, in order
    for s, e, first in windows:
        assert e - s <= context and s < first  # a target always has a predecessor in its window


@pytest.mark.parametrize("context, stride, rule", [
    (1, 1, "context 1"), (0, 1, "context 0"), (-3, 1, "context -3"), (8, 0, "stride 0"), (8, 9, "stride 9"),
])
def test_invalid_windows_are_named_errors(context, stride, rule):
    with pytest.raises(ValueError, match=rule):
        sliding_windows(100, context=context, stride=stride)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(0, 2**31 - 1), st.floats(0, 1))
def test_the_two_mixture_implementations_agree(n_mem, seed, total):
    """torch over whole distributions (composition) and numpy over observed-token log-probabilities
    (eval, tune, EM) compute one formula."""
    import torch

    from memreg.evaluate import mixture_log_probs
    from memreg.mixture import mix_log_probs

    g = torch.Generator().manual_seed(seed)
    members = [torch.log_softmax(torch.randn(5, 7, generator=g) * 3, dim=-1).double() for _ in range(n_mem + 1)]
    raw = torch.rand(n_mem, generator=g).double()
    weights = (raw / raw.sum() * total).tolist() if float(raw.sum()) > 0 else [0.0] * n_mem
    weights = [min(1.0, max(0.0, w)) for w in weights]
    if sum(weights) > 1:
        weights = [w / sum(weights) for w in weights]
    target = torch.randint(0, 7, (5,), generator=g)
    full = mix_log_probs(members, weights).gather(-1, target[:, None]).squeeze(-1).numpy()
    per_token = [m.gather(-1, target[:, None]).squeeze(-1).numpy() for m in members]
    np.testing.assert_allclose(mixture_log_probs(per_token[0], per_token[1:], weights), full, rtol=1e-10, atol=1e-12)
