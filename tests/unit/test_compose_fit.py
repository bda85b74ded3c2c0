"""fit_weights: EM recovers known mixture weights and beats every point of a weight grid."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from memreg.evaluate import mixture_perplexity

import torch  # noqa: F401  (a missing dependency must fail, not skip)
import transformers  # noqa: F401  (a missing dependency must fail, not skip)

from tiny_lms import LICENSES, gpt2, llama, real_text, train_tokenizer

from memreg.compose import compose, fit_weights, member_target_log_probs


def test_em_recovers_the_weights_of_a_synthetic_mixture():
    rng = np.random.default_rng(0)
    n, v = 20_000, 50
    true = np.array([0.5, 0.3, 0.2])  # base, memory 1, memory 2
    # each member: its own categorical distribution per position (peaky, so they are told apart)
    dists = rng.dirichlet(np.full(v, 0.1), size=(3, n))  # (K, N, V)
    who = rng.choice(3, size=n, p=true)
    cum = dists[who, np.arange(n)].cumsum(-1)
    y = np.minimum((cum < rng.random(n)[:, None]).sum(-1), v - 1)
    lps = [np.log(dists[k, np.arange(n), y]) for k in range(3)]
    fitted = fit_weights(lps)
    assert fitted.converged
    assert fitted.weights == pytest.approx([0.3, 0.2], abs=0.02)
    assert fitted.base_weight == pytest.approx(0.5, abs=0.02)


def test_em_handles_a_useless_member_at_the_boundary():
    rng = np.random.default_rng(1)
    good = np.log(rng.uniform(0.2, 0.9, 5000))
    bad = good - 5.0  # always far worse: its weight should go to ~0
    fitted = fit_weights([good, bad])
    assert fitted.weights[0] < 1e-3
    assert fitted.perplexity <= mixture_perplexity(good, [bad], [0.0]) * (1 + 1e-9)


@pytest.fixture(scope="module")
def setup():
    tok = train_tokenizer(real_text(LICENSES))
    v = len(tok)
    model = compose(gpt2(v, 0), [(llama(v, 1), tok), (gpt2(v, 2, layers=1), tok)], [0.1, 0.1], tokenizer=tok)
    held_out = [Path(p).read_text()[:800] for p in LICENSES[:3]]
    return tok, model, held_out


@pytest.mark.slow  # scores held-out text at every grid point
def test_em_is_never_worse_than_the_best_grid_point_on_held_out_text(setup):
    tok, model, held_out = setup
    base, m1, m2 = member_target_log_probs(model, held_out, context=64, stride=32)
    fitted = fit_weights([base, m1, m2])
    grid = [i / 20 for i in range(21)]
    best = min(
        mixture_perplexity(base, [m1, m2], [a, b]) for a, b in itertools.product(grid, grid) if a + b <= 1 + 1e-9
    )
    em = mixture_perplexity(base, [m1, m2], fitted.weights)
    assert em == pytest.approx(fitted.perplexity, rel=1e-9)
    assert em <= best * (1 + 1e-9)
    assert fitted.base_perplexity == pytest.approx(mixture_perplexity(base, [m1, m2], [0, 0]), rel=1e-9)


@pytest.mark.slow  # scores held-out text, then fits by EM
def test_compose_auto_fits_by_em(setup):
    tok, model, held_out = setup
    expected = fit_weights(model, held_out, context=64, stride=32)
    m1, m2 = (model.members[1], model.members[2])
    auto = compose(model.base, [(m1, tok), (m2, tok)], "auto", tokenizer=tok, held_out=held_out, context=64, stride=32)
    assert auto.weights == pytest.approx(expected.weights, rel=1e-9)
    # the same memory twice splits its share
    twice = fit_weights(
        compose(model.base, [(m1, tok), (m1, tok)], [0.1, 0.1], tokenizer=tok), held_out, context=64, stride=32
    )
    once = fit_weights(compose(model.base, [(m1, tok)], [0.1], tokenizer=tok), held_out, context=64, stride=32)
    assert twice.weights == pytest.approx([once.weights[0] / 2] * 2, rel=1e-9)
