"""Documents of registry format 1, as memreg wrote them (tests/golden/write_golden.py), must keep
loading: every later memreg reads registries and packages written by earlier ones.

Each golden file must (1) validate with the current schema and its JSON Schema file, (2) serialise
back to the same JSON, byte for byte, in the writer's own layout, and (3) be read by the registry
(resolve, tags, yanks) and by publish (the card). Format 1 may only grow by optional fields with a
default; such a field appears when an old document is re-serialised, so it must be listed in
ADDED_SINCE_GOLDEN with its default (the test then drops it before comparing). Removing, renaming or
retyping a field fails here: that needs format 2 and an upgrade path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from memreg.registry.api import Registry
from memreg.registry.package import read_card
from memreg.schemas import Manifest, PackageCard
from memreg.schemas.v1 import TagPointer, YankRecord

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "format1"
SCHEMA_FILES = Path(__file__).resolve().parents[2] / "schemas" / "json"

# (golden file, model, JSON Schema file, how memreg writes it)
DOCUMENTS = [
    ("registry/packages/law/0.1.0.json", Manifest, "manifest", lambda m: m.model_dump_json(indent=2)),
    ("registry/packages/law/0.2.0.json", Manifest, "manifest", lambda m: m.model_dump_json(indent=2)),
    ("registry/packages/law/tags/stable.json", TagPointer, "tag", lambda m: m.model_dump_json(indent=2)),
    ("registry/packages/law/yanked/0.1.0.json", YankRecord, "yank", lambda m: m.model_dump_json(indent=2)),
    ("package/memreg.json", PackageCard, "package-card",
     lambda m: m.model_dump_json(indent=2, exclude_none=True) + "\n"),  # memreg.train.packaging.write_package
]
# model name -> {top-level field added to format 1 after the goldens were written: its default}
ADDED_SINCE_GOLDEN: dict[str, dict[str, object]] = {}


def _without_added(model: type, doc: dict) -> dict:
    added = ADDED_SINCE_GOLDEN.get(model.__name__, {})
    for key, default in added.items():
        assert doc.get(key, default) == default, f"{key} of an old document must come back as its default"
        doc.pop(key, None)
    return doc


@pytest.mark.parametrize("path,model,schema,write", DOCUMENTS, ids=[d[0] for d in DOCUMENTS])
def test_golden_document_parses_and_reserialises_identically(path, model, schema, write):
    raw = (GOLDEN / path).read_text()
    parsed = model.model_validate_json(raw)
    again = write(parsed)
    assert _without_added(model, json.loads(again)) == json.loads(raw)
    if not ADDED_SINCE_GOLDEN.get(model.__name__):
        assert again == raw  # same bytes: field order, datetime and float formatting unchanged


@pytest.mark.parametrize("path,model,schema,write", DOCUMENTS, ids=[d[0] for d in DOCUMENTS])
def test_golden_document_matches_the_published_json_schema(path, model, schema, write):
    import jsonschema

    spec = json.loads((SCHEMA_FILES / f"{schema}.schema.json").read_text())
    jsonschema.validate(json.loads((GOLDEN / path).read_text()), spec)


def test_golden_card_keeps_its_training_extra():
    card = read_card(GOLDEN / "package")  # what `memreg publish` reads
    assert card.training is not None and card.training.extra["learning_curve"]
    assert card.training.extra["schedule"]["stop_reason"] == "schedule"


def test_registry_reads_a_golden_format1_registry(tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(GOLDEN / "registry", root)
    registry = Registry.open(str(root))
    assert registry.versions("law") == ["0.1.0", "0.2.0"]
    assert registry.yanked("law") == {"0.1.0"}
    assert registry.tags("law") == {"stable": "0.2.0"}
    assert registry.resolve("law").version == "0.2.0"  # the yanked 0.1.0 is skipped
    assert registry.resolve("law:stable").version == "0.2.0"
    old = registry.resolve("law@0.1.0")
    assert old.training is not None and old.training.extra["documents"] == 3
    assert {f.path for f in old.model.files} >= {"config.json", "model.safetensors", "tokenizer.json", "README.md"}
