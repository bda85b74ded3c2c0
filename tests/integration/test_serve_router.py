"""`memreg serve` with a memory package that ships a router (issue 27): the served mixture routes per
token. The router here is input-dependent (its MLP perturbed from an even start), the package's fixed
weight is 0, so the server's greedy completion must be the in-process routed composition's greedy
output and not the base's (what the fixed weight alone would give, and gives under --no-router)."""

from __future__ import annotations

import torch

from test_serve import NEW, PROMPT, Server, greedy, openai  # noqa: F401  (openai: the serve extra, skipped without it)
from tiny_lms import LICENSES, gpt2, real_text, save_package, train_tokenizer

import pytest

pytestmark = pytest.mark.slow  # a server imports torch and loads its models in a fresh process


def test_a_packaged_router_is_used_by_the_served_mixture(tmp_path):
    import memreg
    from memreg.router import Router, save_router
    from memreg.router.fitting import router_config_for

    tok = train_tokenizer(real_text(LICENSES))
    v = len(tok)
    base = save_package(gpt2(v, 0), tok, tmp_path / "base")
    mem = save_package(gpt2(v, 1), tok, tmp_path / "law", recommended_weight=0.0, name="law")
    fixed = memreg.compose(str(base), [str(mem)], [0.0], router=None)
    router = Router(router_config_for(fixed, base_name=str(base), features=("entropy", "top1", "agreement"),
                                      hidden_units=4)).start_at([0.3, 0.7])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights that depend on each position's features, not a constant
        for p in router.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    save_router(router, mem / "router")

    routed = memreg.compose(str(base), [str(mem)], [0.0])  # router="auto": the package's
    assert routed.routed
    ids = tok(PROMPT)["input_ids"]
    want, base_only = greedy(routed, tok, ids), greedy(fixed, tok, ids)
    assert want != base_only  # else the check below could not tell the router from the fixed weight

    assert _served(tmp_path, [str(base), "-m", f"{mem}=0.0"]) == want
    assert _served(tmp_path, [str(base), "-m", f"{mem}=0.0", "--no-router"]) == base_only  # the opt-out: fixed weight


def _served(tmp_path, args: list[str]) -> str:
    server = Server([*args, "--name", "served"], tmp_path / "serve.log")
    try:
        reply = server.client().completions.create(model="served", prompt=PROMPT, max_tokens=NEW, temperature=0)
    finally:
        server.stop()
    return reply.choices[0].text
