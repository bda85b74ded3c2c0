"""Issue 23: the model card's metadata is what the Hub accepts. `base_model` only when it is a Hub
id (a local path is named in the card text instead), every evaluation's perplexities (base alone,
base with the memory) in `model-index`, and no link to a site that does not exist."""

from __future__ import annotations

import re
import shutil

import pytest
from hypothesis import given, settings, strategies as st

from memreg.registry import Registry
from memreg.registry.card import hub_id
from memreg.schemas import BaseEvaluation, DomainMetadata, Metrics, PackageCard, TrainingProvenance


def _carded(folder, tiny_package, *, init: str, sources: dict | None = None):
    shutil.copytree(tiny_package, folder)
    card = PackageCard(
        name="law", version="1.0.0", description="Memory of Debian's licence texts",
        domain=DomainMetadata(labels=["law"], language="en", license="MIT"),
        training=TrainingProvenance(teacher_model="/models/teacher", init_model=init,
                                    corpus_digest="sha256:" + "cd" * 32, corpus_tokens=1000, k=16,
                                    knn_temperature=3.0, beta=0.5, steps=10, seed=0, memreg_version="0.1.0",
                                    extra={"model_sources": sources} if sources else {}),
        metrics=Metrics(recommended_weight=0.25, evaluations=[
            BaseEvaluation(base="/models/teacher", dataset="held-out 5%", tokens=999, perplexity_base=40.5,
                           perplexity_with_memory=30.25, weight=0.25),
            BaseEvaluation(base="HuggingFaceTB/SmolLM2-135M", dataset="held-out 5%", tokens=999,
                           perplexity_base=26.123456, perplexity_with_memory=22.2, weight=0.2),
        ]),
    )
    (folder / "memreg.json").write_text(card.model_dump_json())
    return folder


def _published_card(registry_url, folder):
    from huggingface_hub import ModelCard

    reg = Registry.init(registry_url)
    reg.publish(folder)
    path = reg.pull("law@1.0.0") / "README.md"
    return ModelCard.load(path), path.read_text()


def test_a_local_init_is_not_the_base_model_and_metrics_are_in_the_model_index(registry_url, tmp_path, tiny_package):
    card, text = _published_card(registry_url, _carded(tmp_path / "law", tiny_package, init="/home/me/models/init"))
    assert card.data.base_model is None and "base_model" not in card.data.to_dict()
    assert "/home/me/models/init (a local path" in text  # named in the text instead
    assert card.data.model_name == "law"
    got = {(r.metric_name, r.metric_value) for r in card.data.eval_results}
    assert got == {("/models/teacher alone", 40.5), ("/models/teacher with this memory (weight 0.25)", 30.25),
                   ("HuggingFaceTB/SmolLM2-135M alone", 26.1235),
                   ("HuggingFaceTB/SmolLM2-135M with this memory (weight 0.2)", 22.2)}
    for r in card.data.eval_results:
        assert (r.task_type, r.metric_type, r.dataset_name) == ("text-generation", "perplexity", "held-out 5%")
    assert card.data.license == "mit" and card.data.language == ["en"]


def test_the_card_links_nowhere_that_does_not_exist(tmp_path, tiny_package):
    _, text = _published_card(str(tmp_path / "reg"), _carded(tmp_path / "law", tiny_package, init="gpt2"))
    assert "memreg.dev" not in text
    assert re.findall(r"https?://", text) == []


@pytest.mark.parametrize("init, sources, expected", [
    ("HuggingFaceTB/SmolLM2-135M", {"init": "hub", "teacher": "local"}, "HuggingFaceTB/SmolLM2-135M"),
    ("gpt2", None, "gpt2"),  # an older package: no record, a valid id
    ("models/tiny", {"init": "local", "teacher": "local"}, None),  # a relative folder spelled like an id
    ("./init", None, None),
    ("/srv/models/qwen", None, None),
    ("~/models/smollm2.gguf", None, None),
    ("smollm2.gguf", {"init": "local"}, None),
])
def test_base_model_only_for_hub_ids(tmp_path, tiny_package, init, sources, expected):
    card, text = _published_card(str(tmp_path / "reg"), _carded(tmp_path / "law", tiny_package, init=init,
                                                                 sources=sources))
    assert card.data.base_model == expected
    assert f"| initialised from | {init}" in text


_segment = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}", fullmatch=True)


@pytest.mark.slow  # a property test
@settings(max_examples=200, deadline=None)
@given(st.lists(_segment, min_size=1, max_size=4), st.sampled_from(["/", "./", "../", "~/", ""]),
       st.sampled_from(["", ".gguf"]))
def test_hub_id_never_returns_a_path(parts, prefix, suffix):
    ref = prefix + "/".join(parts) + suffix
    got = hub_id(ref, None)
    if prefix or suffix or len(parts) > 2:
        assert got is None, ref  # absolute, relative-marked, a file, or deeper than namespace/name
    if got is not None:
        assert got == ref and ref.count("/") <= 1
    assert hub_id(ref, "local") is None


@pytest.mark.slow  # trains a memory
def test_training_records_where_the_models_came_from(tmp_path):
    """`memreg train` writes model_sources, so a folder spelled like a Hub id is never base_model."""
    from licences import licence_files
    from train_helpers import make_teacher_and_init

    from memreg.train import TrainConfig, train

    root = make_teacher_and_init(tmp_path)
    out = root / "law-memory"
    result = train(TrainConfig(corpus=[str(p) for p in licence_files(["BSD", "Artistic"])],
                               teacher=str(root / "teacher"), init=str(root / "init"), out=out, block_size=32, k=8,
                               steps=1, batch_size=2, eval_fraction=0.1, seed=0, name="law", version="1.0.0"))
    assert result.card.training.extra["model_sources"] == {"teacher": "local", "init": "local"}
    card, _ = _published_card(str(tmp_path / "reg"), out)
    assert card.data.base_model is None
    assert len(card.data.eval_results) == 2 * len(result.card.metrics.evaluations) > 0


_IMPORTS = """
import sys
from memreg.cli.main import run
try:
    run(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
print(sorted({m.split(".")[0] for m in sys.modules} & {"huggingface_hub", "torch", "transformers"}))
"""


@pytest.mark.slow  # a fresh memreg process per command
@pytest.mark.parametrize("args", [["list"], ["show", "law"], ["pull", "law@1.0.0"], ["verify", "law@1.0.0"]])
def test_registry_commands_do_not_import_huggingface_hub(tmp_path, tiny_package, args):
    """Only rendering a card (publish) imports huggingface_hub; reading a registry never does."""
    import subprocess
    import sys

    from tests.conftest import REPO

    reg = str(tmp_path / "reg")
    Registry.init(reg).publish(_carded(tmp_path / "law", tiny_package, init="gpt2"))
    proc = subprocess.run([sys.executable, "-c", _IMPORTS, *args, "--registry", reg], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
