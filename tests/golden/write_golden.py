"""Writes the golden format-1 documents in tests/golden/format1/ by running memreg itself: train a
tiny memory on licence texts, publish it twice to a local registry, tag one version, yank another.
The checked-in files are what this code wrote at the time; never edit them by hand. Rerun only to
add a new golden set (a new format gets a new folder), never to make a failing regression pass:

    python tests/golden/write_golden.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "format1"
# A script, not a test: pytest's `pythonpath` setting (pyproject.toml) does not apply to
# `python tests/golden/write_golden.py`, so the folders of train_helpers and licences are put on the path here.
sys.path[:0] = [str(HERE.parent / "unit"), str(HERE.parent)]

# Registry documents copied verbatim: (key in the registry, file under format1/registry/).
REGISTRY_FILES = [
    "memreg-registry.json",
    "packages/law/0.1.0.json",
    "packages/law/0.2.0.json",
    "packages/law/tags/stable.json",
    "packages/law/yanked/0.1.0.json",
]


def main() -> None:
    from licences import licence_files
    from train_helpers import make_teacher_and_init

    from memreg.registry.api import Registry
    from memreg.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MEMREG_HOME"] = str(root / "home")
        make_teacher_and_init(root)
        os.chdir(root)  # relative model paths: the card records them as given, not this temp folder
        train(TrainConfig(corpus=[str(p) for p in licence_files(["BSD", "Artistic", "Apache-2.0"])],
                          teacher="teacher", init="init", out=Path("law-memory"), block_size=32, k=16, steps=3,
                          batch_size=4, eval_fraction=0.1, seed=0, name="law", version="0.1.0",
                          description="Tiny memory of software licences (golden format-1 sample)",
                          domain=["law", "licences"], language="en", license="Apache-2.0",
                          corpus_description="Debian common-licenses texts"))
        registry = Registry.init(str(root / "registry"))
        registry.publish(root / "law-memory")
        registry.publish(root / "law-memory", version="0.2.0", tags=["stable"])
        registry.yank("law@0.1.0", reason="golden sample of a yank record")

        shutil.rmtree(OUT, ignore_errors=True)
        (OUT / "package").mkdir(parents=True)
        shutil.copy(root / "law-memory" / "memreg.json", OUT / "package" / "memreg.json")
        for key in REGISTRY_FILES:
            dest = OUT / "registry" / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "registry" / key, dest)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
