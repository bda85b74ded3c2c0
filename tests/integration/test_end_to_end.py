"""The whole path a user takes: train a tiny memory on licence texts -> publish it to S3 (moto,
through s3fs) -> pull it into an empty cache -> compose it with a base -> generate.

What must hold end to end: the pulled weights are the trained ones bit for bit, and the composed
model's output is exactly the mixture log(w p_mem + (1 - w) p_base) of the two models it was built
from, at every position of a prompt and at every greedy step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import torch
import faiss  # noqa: F401  (a missing dependency must fail, not skip)
import s3fs  # noqa: F401  (a missing dependency must fail, not skip)

from licences import licence_files
from train_helpers import make_teacher_and_init, single_thread_fixture

pytestmark = pytest.mark.slow  # trains, publishes to S3, pulls and generates

_one_thread = single_thread_fixture()
WEIGHT = 0.3
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root with tok/teacher/init, the trained package folder)."""
    from memreg.train import TrainConfig, train

    root = make_teacher_and_init(tmp_path_factory.mktemp("e2e"))
    corpus = root / "corpus"
    corpus.mkdir()
    for p in licence_files(["BSD", "Artistic", "Apache-2.0"]):
        shutil.copy(p, corpus / p.name)
    out = root / "law-memory"
    train(TrainConfig(corpus=[str(corpus)], teacher=str(root / "teacher"), init=str(root / "init"), out=out,
                      block_size=32, k=16, steps=3, batch_size=4, eval_fraction=0.1, seed=0, name="law",
                      version="1.0.0", domain=["law"]))
    return root, out


def _manual_mixture(base, memory, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """log(w p_mem + (1 - w) p_base), (B, T, V), from the two models' own logits, in float64."""
    with torch.no_grad():
        p_base = torch.softmax(base(ids).logits[..., :vocab].double(), -1)
        p_mem = torch.softmax(memory(ids).logits[..., :vocab].double(), -1)
    return torch.log(WEIGHT * p_mem + (1 - WEIGHT) * p_base)


def test_train_publish_pull_compose_generate(trained, s3_url, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memreg.compose import compose
    from memreg.registry.api import Registry

    root, package = trained
    published = Registry.init(s3_url).publish(package, tags=["stable"])
    assert published.manifest.ref == "law@1.0.0"

    fresh = tmp_path / "fresh-home"  # another machine: an empty cache, only the S3 registry in common
    monkeypatch.setenv("MEMREG_HOME", str(fresh))
    pulled = Registry.open(s3_url).pull("law:stable")
    assert pulled.is_relative_to(fresh)

    trained_w, pulled_w = load_file(package / "model.safetensors"), load_file(pulled / "model.safetensors")
    assert trained_w.keys() == pulled_w.keys() and trained_w
    for name in trained_w:
        assert trained_w[name].dtype == pulled_w[name].dtype
        assert torch.equal(trained_w[name], pulled_w[name]), name
    assert (package / "model.safetensors").read_bytes() == (pulled / "model.safetensors").read_bytes()

    tok = AutoTokenizer.from_pretrained(root / "tok")
    composed = compose(str(root / "teacher"), "law:stable", WEIGHT, registry=s3_url)
    base = AutoModelForCausalLM.from_pretrained(root / "teacher").eval()
    memory = AutoModelForCausalLM.from_pretrained(pulled).eval()
    vocab = len(tok)

    prompt = Path(licence_files(["MPL-2.0"])[0]).read_text()[200:300]  # text the memory was not trained on
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got = composed(ids).logits
    torch.testing.assert_close(got.double(), _manual_mixture(base, memory, ids, vocab), rtol=0, atol=1e-5)

    out = composed.generate(ids, torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                            return_dict_in_generate=True)
    new = out.sequences[0, ids.shape[1]:]
    assert len(new) == NEW_TOKENS
    seq = ids
    for token in new.tolist():  # each greedy step picks the argmax of the manual mixture
        assert token == int(_manual_mixture(base, memory, seq, vocab)[0, -1].argmax())
        seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
