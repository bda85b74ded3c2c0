"""Every lazily served public name resolves (a typo in a lazy table only fails when somebody uses it)."""

from __future__ import annotations

import memreg
import memreg.registry


def test_every_public_name_of_memreg_resolves():
    for name in memreg.__all__:
        assert getattr(memreg, name) is not None, name
    assert callable(memreg.train) and memreg.train.TrainConfig is memreg.TrainConfig


def test_every_public_name_of_the_registry_resolves():
    for name in memreg.registry.__all__:
        assert getattr(memreg.registry, name) is not None, name
    assert callable(memreg.registry.fingerprint)  # the function, not a submodule of the same name
