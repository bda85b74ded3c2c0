"""The CLI's registry commands stay light: importing the app (what every `memreg` run does) loads no
training pipeline, numpy, torch or transformers. Each check runs in a fresh interpreter, since this
test process has imported them already."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

HEAVY = ("numpy", "torch", "transformers", "faiss", "memreg.train.pipeline", "memreg.train.corpus")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_importing_the_cli_loads_no_training_pipeline_and_no_ml_libraries():
    loaded = _loaded_after("import memreg.cli.main")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    # nor the TrainConfig model: `memreg train`'s options take their defaults from memreg.train.defaults
    assert "memreg.train.config" not in loaded


def test_the_cli_defaults_are_the_train_configs():
    from memreg.train import TrainConfig

    fields = TrainConfig.model_fields
    assert (fields["lr"].default, fields["max_epochs"].default) == (3e-4, 20.0)
    from memreg.cli.train import train

    params = inspect.signature(train).parameters
    assert params["lr"].default == fields["lr"].default
    assert params["max_epochs"].default == fields["max_epochs"].default


def test_the_registry_api_loads_no_ml_libraries():
    loaded = _loaded_after("import memreg.registry.api, memreg.registry.index")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_memreg_train_stays_callable_and_lazy():
    loaded = _loaded_after(
        "import memreg, memreg.train\n"
        "assert callable(memreg.train)\n"
        "from memreg.train import TrainConfig, TrainProgress\n"
        "assert memreg.train.TrainConfig is TrainConfig is memreg.TrainConfig\n"
        "assert 'TrainConfig' in dir(memreg.train)"
    )
    assert "memreg.train.pipeline" not in loaded and "numpy" not in loaded
    loaded = _loaded_after("from memreg.train import train, TrainResult\nassert callable(train)")
    assert "memreg.train.pipeline" in loaded
