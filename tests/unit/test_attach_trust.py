"""Issue 11, finding 5: a memory attached from a registry is checked by the fingerprint of the
tokenizer files it pulled, never by the manifest's copy of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memreg.registry import Registry
from memreg.registry.errors import TokenizerMismatchError
from tests.conftest import make_package
from tests.tiny_lms import LICENSES, gpt2, real_text, save_package, train_tokenizer


@pytest.fixture
def registry_with_a_liar(tmp_path, tiny_tokenizer_dir):
    """`law` fits the base; `evil` has another tokenizer and law's fingerprint copied into its manifest."""
    base = make_package(tmp_path / "base", tiny_tokenizer_dir, seed=1)
    law = make_package(tmp_path / "law", tiny_tokenizer_dir, seed=2)
    other_tok = train_tokenizer(real_text(LICENSES[::-1]), vocab_size=330, pad="<other>")
    evil = save_package(gpt2(len(other_tok), seed=3), other_tok, tmp_path / "evil")
    reg = Registry.init(str(tmp_path / "reg"))
    law_m = reg.publish(law, name="law", version="1.0.0").manifest
    reg.publish(evil, name="evil", version="1.0.0")
    stored = tmp_path / "reg" / "packages" / "evil" / "1.0.0.json"
    doc = json.loads(stored.read_text())
    doc["tokenizer"] = law_m.tokenizer.model_dump(mode="json")  # the lie
    doc["model"]["embedding_rows"] = law_m.model.embedding_rows
    stored.chmod(0o644)
    stored.write_text(json.dumps(doc))
    return base, evil, reg


def test_tampered_fingerprint_is_refused_like_the_folder_itself(registry_with_a_liar):
    from memreg.compose import compose

    base, evil_folder, reg = registry_with_a_liar
    with pytest.raises(TokenizerMismatchError):  # the control: the same files given as a path
        compose(str(base), [str(evil_folder)], [0.3])
    with pytest.raises(TokenizerMismatchError, match="evil@1.0.0"):
        compose(str(base), ["evil@1.0.0"], [0.3], registry=reg)


def test_an_honest_registry_memory_still_composes(tmp_path, tiny_tokenizer_dir):
    from memreg.compose import compose

    base = make_package(tmp_path / "base", tiny_tokenizer_dir, seed=1)
    reg = Registry.init(str(tmp_path / "reg"))
    reg.publish(make_package(tmp_path / "law", tiny_tokenizer_dir, seed=2), name="law", version="1.0.0")
    assert compose(str(base), ["law@1.0.0"], [0.3], registry=reg).weights == [0.3]


def test_attaching_a_yanked_version_warns(tmp_path, tiny_tokenizer_dir):
    from memreg.compose import compose

    base = make_package(tmp_path / "base", tiny_tokenizer_dir, seed=1)
    reg = Registry.init(str(tmp_path / "reg"))
    reg.publish(make_package(tmp_path / "law", tiny_tokenizer_dir, seed=2), name="law", version="1.0.0")
    reg.yank("law@1.0.0", "bad eval")
    with pytest.warns(UserWarning, match="law@1.0.0 is yanked"):
        compose(str(base), ["law@1.0.0"], [0.3], registry=reg)
