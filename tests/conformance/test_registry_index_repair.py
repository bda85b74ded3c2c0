"""Issue 23 item 3: an index repair (`verify --repair`, and the repair `show` writes) must not erase a
yank, tag or publish that lands while it runs. Each test injects the change at a chosen point of the
repair (right after it listed the package, or right before it writes the index) and checks that `list`
shows the change afterwards, on every backend."""

from __future__ import annotations

import threading

import pytest

from memreg.registry import Registry
from memreg.registry.index import index_key


@pytest.fixture
def reg(law_and_code) -> Registry:  # tests/conftest.py
    return law_and_code


def _listed(reg: Registry, **kw) -> list[tuple[str, str, bool, list[str]]]:
    return [(s.manifest.ref, s.manifest.description, s.yanked, s.tags) for s in reg.list(**kw)]


# the concurrent change, and what `list` must show once the repair is over
CHANGES = {
    "yank": (lambda reg, pkg: reg.yank("law@1.1.0"), ("law@1.0.0", "first", False, [])),
    "tag": (lambda reg, pkg: reg.tag("law@1.1.0", "stable"), ("law@1.1.0", "second", False, ["stable"])),
    "publish": (lambda reg, pkg: reg.publish(pkg, name="law", version="2.0.0", description="third"),
                ("law@2.0.0", "third", False, [])),
}


def _once(action):
    """`action` the first time the returned callable is called, nothing after (nor while it runs:
    the change's own writes go through the same patched store methods)."""
    state = {"done": False}

    def run() -> None:
        if not state["done"]:
            state["done"] = True
            action()

    return run


def _after_listing(reg: Registry, monkeypatch, action) -> None:
    """Run `action` right after the first listing of packages/law/ returns."""
    original, action = reg.store.list, _once(action)

    def list_then_act(prefix):
        out = original(prefix)
        if prefix == "packages/law":
            action()
        return out

    monkeypatch.setattr(reg.store, "list", list_then_act)


def _before_index_write(reg: Registry, monkeypatch, action) -> None:
    """Run `action` right before the first compare-and-swap of index/law.json."""
    original, action = reg.store.swap, _once(action)

    def act_then_swap(key, data, *, expected):
        if key == index_key("law"):
            action()
        return original(key, data, expected=expected)

    monkeypatch.setattr(reg.store, "swap", act_then_swap)


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("inject", [_after_listing, _before_index_write], ids=["after-listing", "before-write"])
def test_verify_repair_keeps_a_change_that_lands_while_it_runs(reg, tiny_package, monkeypatch, change, inject):
    act, shown = CHANGES[change]
    with monkeypatch.context() as m:
        inject(reg, m, lambda: act(reg, tiny_package))
        assert reg.rebuild_index() == ["code", "law"]
    assert shown in _listed(reg)  # was the index from before the change: the yanked version as current, ...
    assert shown[0] in [s.manifest.ref for s in reg.list(all_versions=True)]
    assert reg.rebuild_index() == ["code", "law"]  # and a repair with nothing in its way agrees
    assert shown in _listed(reg)


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_shows_repair_keeps_a_change_that_lands_between_its_listing_and_its_index_read(
        reg, tiny_package, monkeypatch, change):
    """`show` lists the package and reads its index at once; in the narrow window where the change
    lands between the two, the index it read already has the change and the listing does not."""
    act, shown = CHANGES[change]
    listed, acting = threading.Event(), []
    original_list, original_read_many = reg.store.list, reg.store.read_many

    def list_then_act(prefix):
        out = original_list(prefix)
        if prefix == "packages/law" and not acting:  # the change's own listings pass through
            acting.append(1)
            act(reg, tiny_package)
            listed.set()
        return out

    def read_after_listing(keys):
        if index_key("law") in keys:
            listed.wait(timeout=10)
        return original_read_many(keys)

    with monkeypatch.context() as m:
        m.setattr(reg.store, "list", list_then_act)
        m.setattr(reg.store, "read_many", read_after_listing)
        reg.show("law@1.0.0")
    assert listed.is_set()
    assert shown in _listed(reg)
