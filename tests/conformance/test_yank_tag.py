"""Issue 11: `unyank`, and tags refused on yanked versions unless forced (local, memory:// and S3)."""

from __future__ import annotations

import threading

import pytest

from memreg.registry import Registry
from memreg.registry.errors import InvalidReferenceError, YankedVersionError


@pytest.fixture
def reg(registry_url, tiny_package) -> Registry:
    r = Registry.init(registry_url)
    r.publish(tiny_package, name="law", version="1.0.0")
    return r


def test_unyank_restores_a_version_and_is_idempotent(reg):
    reg.yank("law@1.0.0", "bad eval")
    assert reg.yanked("law") == {"1.0.0"} and reg.versions("law", include_yanked=False) == []
    assert reg.unyank("law@1.0.0").ref == "law@1.0.0"
    assert reg.yanked("law") == set() and reg.resolve("law").version == "1.0.0"
    reg.unyank("law@1.0.0")  # a second unyank is a no-op, as a second yank is
    with pytest.raises(InvalidReferenceError, match="name@VERSION"):
        reg.unyank("law")


def test_tag_onto_a_yanked_version_is_refused_unless_forced(reg):
    reg.tag("law@1.0.0", "prod")
    reg.yank("law@1.0.0")
    with pytest.raises(YankedVersionError, match=r"law@1.0.0 is yanked.*--force"):
        reg.tag("law@1.0.0", "stable")
    assert "stable" not in reg.tags("law")
    move = reg.tag("law@1.0.0", "stable", force=True)
    assert move.version == "1.0.0" and reg.tags("law")["stable"] == "1.0.0"


def test_a_yank_landing_during_a_tag_move_never_leaves_the_tag_on_it(reg, monkeypatch):
    """The yank is forced to land between the tag's check and its swap (deterministic, not luck)."""
    real_swap = type(reg.store).swap
    landed = threading.Event()

    def swap_after_a_yank(self, key, data, *, expected):
        if key.endswith("tags/prod.json") and not landed.is_set():
            landed.set()
            reg.yank("law@1.0.0", "found broken")
        return real_swap(self, key, data, expected=expected)

    monkeypatch.setattr(type(reg.store), "swap", swap_after_a_yank)
    with pytest.raises(YankedVersionError, match="yanked while"):
        reg.tag("law@1.0.0", "prod")
    assert "prod" not in reg.tags("law")
