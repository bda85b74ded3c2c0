"""Issue 11: publish renders the manifest into the package's README.md, a model card whose YAML
metadata huggingface_hub.ModelCard reads."""

from __future__ import annotations

import shutil

import pytest

from memreg.registry import Registry
from memreg.schemas import BaseEvaluation, DomainMetadata, Metrics, PackageCard, TrainingProvenance


@pytest.fixture
def carded(tmp_path, tiny_package):
    folder = tmp_path / "law"
    shutil.copytree(tiny_package, folder)
    card = PackageCard(
        name="law", version="1.0.0", description="Memory of Debian's licence texts",
        domain=DomainMetadata(labels=["law", "licences"], language="en", license="CC-BY-4.0",
                              corpus="/usr/share/common-licenses"),
        training=TrainingProvenance(teacher_model="gpt2-teacher", init_model="tiny-init", corpus_digest="sha256:" + "ab" * 32,
                                    corpus_tokens=12345, k=64, knn_temperature=10.0, beta=0.5, steps=200, seed=0,
                                    memreg_version="0.1.0"),
        metrics=Metrics(recommended_weight=0.25, evaluations=[BaseEvaluation(
            base="tiny-base", dataset="held-out 5%", tokens=999, perplexity_base=40.5, perplexity_with_memory=30.25, weight=0.25)]),
    )
    (folder / "memreg.json").write_text(card.model_dump_json())
    return folder


def test_pulled_package_has_a_card_the_hub_reads(tmp_path, carded):
    from huggingface_hub import ModelCard

    reg = Registry.init(str(tmp_path / "reg"))
    m = reg.publish(carded).manifest
    assert "README.md" in [f.path for f in m.model.files]
    text = (reg.pull("law@1.0.0") / "README.md").read_text()
    meta = ModelCard(text).data.to_dict()
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en"] and meta["base_model"] == "tiny-init"
    assert meta["tags"] == ["memreg", "memory-decoder", "law", "licences"]
    assert meta["memreg"] == {"name": "law", "tokenizer_fingerprint": m.tokenizer.digest,
                              "recommended_weight": 0.25}
    for needle in ("# law\n", "Memory of Debian's licence texts", m.tokenizer.digest, "memreg attach BASE_MODEL law ",
                   "| tiny-base | held-out 5% | 999 | 40.50 | 30.25 | 0.25 |", "| teacher | gpt2-teacher |",
                   "| recommended weight | 0.25 |", "model.safetensors"):
        assert needle in text, needle


def test_the_card_is_deterministic_so_republishing_is_a_no_op(tmp_path, carded):
    reg = Registry.init(str(tmp_path / "reg"))
    first = reg.publish(carded)
    again = reg.publish(carded)
    assert first.created and not again.created and again.manifest == first.manifest
    other = reg.publish(carded, version="1.0.1")  # unchanged weights as a new version: nothing new uploaded
    assert other.created and other.uploaded == 0


def test_an_authors_readme_is_kept_and_a_generated_card_is_replaced(tmp_path, carded):
    (carded / "README.md").write_text("Trained on a Tuesday.\n")
    reg = Registry.init(str(tmp_path / "reg"))
    reg.publish(carded)
    pulled = reg.pull("law@1.0.0")
    text = (pulled / "README.md").read_text()
    assert text.count("Trained on a Tuesday.") == 1 and text.index("# law\n") < text.index("Trained on a Tuesday.")
    again = tmp_path / "again"  # a pulled package published again as a new version (memreg tune --write)
    shutil.copytree(pulled, again)
    (again / "memreg.json").write_text((again / "memreg.json").read_text().replace('"recommended_weight": 0.25', '"recommended_weight": 0.5'))
    reg.publish(again, version="1.1.0")
    text2 = (reg.pull("law@1.1.0") / "README.md").read_text()
    assert text2.count("# law\n") == 1 and "| recommended weight | 0.5 |" in text2 and text2.count("Trained on a Tuesday.") == 1


def test_the_card_shows_a_shipped_router_and_only_then(tmp_path, carded):
    from memreg.registry.card import render_readme
    from memreg.schemas.v1 import RouterRecord

    reg = Registry.init(str(tmp_path / "reg"))
    m = reg.publish(carded).manifest
    without = render_readme(m)
    assert "## Router" not in without and "router" not in without.split("---")[1]  # no router: the card is as before
    record = RouterRecord(base="Qwen/Qwen2.5-Coder-0.5B", tokenizer=m.tokenizer.digest, hidden_size=896,
                          features=["entropy", "top1"], held_out_tokens=4096, perplexity_fixed=12.5,
                          perplexity_router=12.0, gain=12.5 / 12.0)
    routed = m.model_copy(update={"metrics": m.metrics.model_copy(update={"router": record})})
    text = render_readme(routed)
    for needle in ("## Router", "| fitted for | Qwen/Qwen2.5-Coder-0.5B |", f"| that base's tokenizer | `{m.tokenizer.digest}` |",
                   "| hidden size | 896 |", "| features | entropy, top1 |", "| held-out tokens | 4096 |",
                   "| perplexity, best fixed weight | 12.50 |", "| perplexity, router | 12.00 |", "| 1.0417 |"):
        assert needle in text, needle
    from huggingface_hub import ModelCard

    assert ModelCard(text).data.to_dict()["memreg"]["router"] == {
        "base": "Qwen/Qwen2.5-Coder-0.5B", "features": ["entropy", "top1"], "gain": 1.0417}
    assert text.index("## Evaluation") < text.index("## Router") < text.index("## Training provenance")
