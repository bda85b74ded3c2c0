"""The router (memreg.router): weights that always sum to one, the base-only threshold, equality with
the fixed-weight path when it outputs a constant (forward and cached decoding), save/load through
safetensors + JSON, and refusal for a base it was not fitted for."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_lms import LICENSES, gpt2, llama, real_text, train_tokenizer

from memreg.compose import ComposedForCausalLM
from memreg.core.errors import RouterFileError, RouterMismatchError
from memreg.router import Router, RouterInputs, load_router, position_inputs, save_router
from memreg.router.fitting import router_config_for
from memreg.schemas.router import RouterBase, RouterConfig

DIGEST = "sha256:" + "ab" * 32


def _config(members: int = 2, *, features=("entropy", "top1", "agreement"), threshold=None, hidden=(8, 8, 8, 8),
            units: int = 4, projection: int = 3, floor: float = 1e-6) -> RouterConfig:
    return RouterConfig(features=list(features), members=members, hidden_units=units,
                        hidden_projection=projection if "hidden" in features else 0,
                        hidden_sizes=list(hidden[:members]), base=RouterBase(name="b", tokenizer=DIGEST, hidden_size=hidden[0]),
                        threshold=threshold, floor=floor)


def _inputs(members: int, rows: int, vocab: int = 11, seed: int = 0, hidden: bool = False) -> RouterInputs:
    g = torch.Generator().manual_seed(seed)
    lps = [torch.log_softmax(torch.randn(rows, vocab, generator=g) * 3, -1) for _ in range(members)]
    hid = [torch.randn(rows, 8, generator=g) for _ in range(members)] if hidden else None
    return position_inputs(lps, hid)


@settings(max_examples=20, deadline=None)
@given(members=st.integers(2, 4), seed=st.integers(0, 10_000), scale=st.floats(0.0, 50.0),
       threshold=st.one_of(st.none(), st.floats(0.0, 0.99)), hidden=st.booleans())
def test_weights_sum_to_one_and_lie_in_unit_interval(members, seed, scale, threshold, hidden):
    feats = ("entropy", "top1", "agreement", "hidden") if hidden else ("entropy", "top1", "agreement")
    router = Router(_config(members, features=feats, threshold=threshold))
    torch.manual_seed(seed)
    with torch.no_grad():  # any parameters, even extreme ones
        for p in router.parameters():
            p.copy_(torch.randn_like(p) * scale)
    w = router(_inputs(members, 17, seed=seed, hidden=hidden))
    assert w.shape == (17, members) and w.dtype == torch.float64
    assert torch.all(w >= 0) and torch.all(w <= 1)
    assert torch.allclose(w.sum(-1), torch.ones(17, dtype=torch.float64), atol=1e-12, rtol=0)


def test_threshold_sends_low_memory_weight_to_the_base_alone():
    x = _inputs(2, 5)
    low = Router(_config(2, threshold=0.2)).start_at([0.9, 0.1])
    w = low(x)
    assert torch.equal(w, torch.tensor([[1.0, 0.0]] * 5, dtype=torch.float64))  # exactly base-only
    # the same router without the threshold (as while fitting) keeps the memory's share
    assert torch.allclose(low(x, threshold=False)[:, 1], torch.full((5,), 0.1, dtype=torch.float64), atol=1e-6)
    high = Router(_config(2, threshold=0.05)).start_at([0.9, 0.1])
    assert torch.all(high(x)[:, 1] > 0.09)


def test_floor_keeps_every_member_above_zero_and_is_validated():
    router = Router(_config(3)).start_at([1.0, 0.0, 0.0])
    w = router(_inputs(3, 4))
    assert torch.all(w[:, 1:] >= 1e-6)
    with pytest.raises(ValueError, match="leaves nothing to route"):
        _config(3, floor=0.5)


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="name one twice"):
        _config(2, features=("top1", "top1"))
    with pytest.raises(ValueError, match="2 hidden sizes for 3 members"):
        RouterConfig(features=["top1"], members=3, hidden_units=2, hidden_sizes=[8, 8],
                     base=RouterBase(name="b", tokenizer=DIGEST, hidden_size=8))
    with pytest.raises(ValueError, match="format_version 2 is not supported"):
        RouterConfig.model_validate({"format_version": 2})


# ---------------------------------------------------------------- with tiny real models


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(real_text(LICENSES[:3], limit=60_000))


@pytest.fixture(scope="module")
def members(tok):
    v = len(tok)
    return gpt2(v, 0), gpt2(v, 1, layers=1), llama(v, 2)


def _composed(tok, members, weights=(0.3,), n=1):
    base, *mems = members
    return ComposedForCausalLM.from_members(base, mems[:n], list(weights), tokenizer=tok)


def _constant(model, weights):
    config = router_config_for(model, base_name="tiny", features=("entropy", "top1", "agreement", "hidden"),
                               hidden_units=4, hidden_projection=3)
    config = config.model_copy(update={"floor": 0.0})
    return Router(config).double().start_at(weights)


@pytest.mark.parametrize("n", [1, 2])
def test_a_constant_router_equals_the_fixed_weight_path_exactly(tok, members, n):
    model = _composed(tok, members, [0.0] * n, n)
    router = _constant(model, [0.5, 0.3, 0.2][: n + 1] if n == 2 else [0.7, 0.3])
    model.set_router(router)
    ids = torch.tensor(tok(["The licensee may copy the Program", "Permission is granted"], padding=True)["input_ids"])
    mask = (ids != tok.pad_token_id).long()
    routed = model(input_ids=ids, attention_mask=mask).logits
    constant = router.memory_weights(_any_inputs(model, ids))[0, 0].tolist()  # what it outputs everywhere
    fixed = _composed(tok, members, constant, n)
    assert torch.equal(routed, fixed(input_ids=ids, attention_mask=mask).logits)
    # the opt-out is the model's own fixed weights
    model.use_router = False
    model.set_weights(constant)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, routed)


def _any_inputs(model, ids):
    from memreg.compose.members import member_step

    steps = [member_step(m, model.member_keys[j], model.vocab_size, ids, attention_mask=None, position_ids=None,
                         extra={"output_hidden_states": True}) for j, m in enumerate(model.members)]
    return position_inputs([s.log_probs for s in steps], [s.hidden_states[-1] for s in steps])


def test_cached_decoding_routes_each_step_as_a_full_forward_would(tok, members):
    """generate() feeds one token a step with the members' caches: the router's weights at that step
    come from that step's features, the same as a forward over the whole sequence gives."""
    model = _composed(tok, members, [0.0], 1)
    router = _constant(model, [0.6, 0.4])
    with torch.no_grad():  # a router whose weights vary with the position's features
        torch.manual_seed(3)
        for p in router.parameters():
            p.add_(torch.randn_like(p))
    model.set_router(router)
    ids = torch.tensor([tok("The licensee may")["input_ids"]])
    out = model.generate(ids, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    full = model(input_ids=out.sequences[:, :-1]).logits
    for step, scores in enumerate(out.scores):
        pos = ids.shape[1] - 1 + step
        assert torch.allclose(scores[0], full[0, pos].to(scores.dtype), atol=1e-9)
    model.use_router = False
    fixed = model(input_ids=out.sequences[:, :-1]).logits
    assert not torch.allclose(fixed, full, atol=1e-6)  # the router did change the mixture


def test_save_load_round_trip_is_safetensors_and_json(tmp_path, tok, members):
    model = _composed(tok, members)
    router = _constant(model, [0.8, 0.2])
    with torch.no_grad():
        for p in router.parameters():
            p.add_(0.1)
    path = save_router(router, tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["router.safetensors", "router_config.json"]
    assert json.loads(path.read_text())["format_version"] == 1
    again = load_router(tmp_path / "r")
    assert again.config == router.config
    for (k, a), (k2, b) in zip(router.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = _any_inputs(model, torch.tensor([tok("GNU General Public License")["input_ids"]]))
    assert torch.equal(router(x), again(x))


def test_a_router_file_that_lacks_a_tensor_is_refused(tmp_path, tok, members):
    from safetensors.torch import load_file, save_file

    model = _composed(tok, members)
    save_router(_constant(model, [0.8, 0.2]), tmp_path / "r")
    tensors = load_file(str(tmp_path / "r" / "router.safetensors"))
    tensors.pop("router.out.bias")
    save_file(tensors, str(tmp_path / "r" / "router.safetensors"))
    with pytest.raises(RouterFileError, match="lacks router.out.bias"):
        load_router(tmp_path / "r")
    (tmp_path / "r" / "router_config.json").write_text("{}")
    with pytest.raises(RouterFileError, match="is not a router config"):
        load_router(tmp_path / "r")


def test_a_router_for_another_base_is_refused_before_it_runs(tok, members):
    model = _composed(tok, members)
    router = _constant(model, [0.8, 0.2])
    other_tok = router.config.base.model_copy(update={"tokenizer": DIGEST})
    with pytest.raises(RouterMismatchError, match="fitted for the base 'tiny', whose tokenizer fingerprint"):
        model.set_router(Router(router.config.model_copy(update={"base": other_tok})))
    wider = router.config.model_copy(update={"base": router.config.base.model_copy(update={"hidden_size": 64}),
                                             "hidden_sizes": [64, *router.config.hidden_sizes[1:]]})
    with pytest.raises(RouterMismatchError, match="hidden size 64; this base's is 32"):
        model.set_router(Router(wider))
    two = _composed(tok, members, [0.1, 0.1], 2)
    with pytest.raises(RouterMismatchError, match="weighs 2 members"):
        two.set_router(router)
    assert model.router is None and two.router is None


@pytest.mark.slow
def test_fit_router_trains_only_the_router_and_records_the_held_out_comparison(tok, members):
    from memreg.router import fit_router

    model = _composed(tok, members)
    before = [p.clone() for p in model.parameters()]
    text = real_text(LICENSES[:2], limit=6_000)
    fitted = fit_router(model, [t[:3000] for t in text], base_name="tiny", hidden_units=8, steps=60, context=64, stride=32)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # members frozen
    fit = fitted.config.fit
    assert fit is not None and fit.held_out_tokens == len(fitted.held_out_router) > 0
    assert fit.perplexity_router == pytest.approx(fitted.perplexity_router)
    assert fitted.gain == pytest.approx(fit.perplexity_fixed / fit.perplexity_router)
    assert len(fit.fixed_weights) == 1 and 0 <= fit.fixed_weights[0] <= 1


@pytest.mark.slow  # composes five times from folders
def test_compose_uses_a_package_router_only_where_it_applies(tmp_path, tok, members):
    """router='auto': the router a single memory's package ships (router/) is used; opted out with
    router=None; not used in a mixture of two memories (with a warning); a composition saved with it
    reopens with it."""
    from tiny_lms import save_package

    from memreg.compose import compose

    base_dir = save_package(members[0], tok, tmp_path / "base")
    law = save_package(members[2], tok, tmp_path / "law", recommended_weight=0.3)
    code = save_package(members[1], tok, tmp_path / "code", recommended_weight=0.2)
    model = compose(base_dir, [law], router=None)
    router = _constant(model, [0.6, 0.4])
    save_router(router, law / "router")
    assert compose(base_dir, [law]).routed
    assert not compose(base_dir, [law], router=None).routed
    with pytest.warns(UserWarning, match="not used in a mixture of 2 memories"):
        assert not compose(base_dir, [law, code]).routed
    routed = compose(base_dir, [law])
    routed.save_pretrained(tmp_path / "saved")
    again = ComposedForCausalLM.from_pretrained(tmp_path / "saved")
    assert again.routed and again.router.config == routed.router.config
    ids = torch.tensor([tok("Permission is hereby granted")["input_ids"]])
    assert torch.equal(again(input_ids=ids).logits, routed(input_ids=ids).logits)
    assert not ComposedForCausalLM.from_pretrained(tmp_path / "saved", use_router=False).routed
