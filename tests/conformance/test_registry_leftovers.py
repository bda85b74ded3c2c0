"""Issue 23 item 9, registry side: a publish that fails leaves nothing behind (no lease, no temp
file, no staged model card), on every backend where it applies."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from memreg.registry import Registry
from memreg.registry.api import LEASES
from memreg.registry.errors import StoreError
from memreg.registry.fsutil import TMP_PREFIX, locked_temp
from memreg.registry.settings import cards_dir


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _temp_files(url: str) -> list[Path]:
    root = Path(url)
    return [p for p in root.rglob(f"{TMP_PREFIX}*")] if root.is_dir() else []


def test_a_full_disk_at_the_lease_leaves_no_temp_file(tmp_path, tiny_package, monkeypatch):
    """Each publish that failed on a full disk leaked its lease's temp file (write_temp kept it)."""
    url = str(tmp_path / "registry")
    reg = Registry.init(url)
    monkeypatch.setattr(os, "fsync", _full_disk)  # the lease is the first write that syncs
    with pytest.raises(StoreError, match=r"cannot write leases/.*No space left on device"):
        reg.publish(tiny_package, name="law", version="1.0.0")
    monkeypatch.undo()
    assert _temp_files(url) == [] and reg.store.list(LEASES) == []
    assert reg.store.list("packages") == []


def test_a_failed_commit_removes_its_lease(registry_url, tiny_package, monkeypatch):
    reg = Registry.init(registry_url)
    create = reg.store.create

    def create_on_a_full_disk(key, data):
        if key.startswith("packages/"):
            _full_disk()
        return create(key, data)

    monkeypatch.setattr(reg.store, "create", create_on_a_full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        reg.publish(tiny_package, name="law", version="1.0.0")
    assert reg.store.list(LEASES) == [] and _temp_files(registry_url) == []
    monkeypatch.undo()
    assert reg.publish(tiny_package, name="law", version="1.0.0").created  # and it publishes once there is room
    assert len(reg.store.list(LEASES)) == 1  # a successful publish keeps its lease until LEASE_TTL


def test_publish_leaves_no_staged_model_card(registry_url, tiny_package, monkeypatch):
    """$MEMREG_HOME/cards kept every card ever rendered; it is the publish's own, removed after use."""
    reg = Registry.init(registry_url)
    reg.publish(tiny_package, name="law", version="1.0.0")
    reg.publish(tiny_package, name="law", version="1.0.0")  # the same again: a no-op that still renders
    monkeypatch.setattr(reg.store, "create", lambda key, data: _full_disk())
    with pytest.raises(OSError):
        reg.publish(tiny_package, name="law", version="1.0.1")
    assert list(cards_dir().iterdir()) == []
    assert reg.resolve("law").version == "1.0.0"


def test_cache_clean_removes_cards_a_killed_publish_left_but_not_a_live_ones(memreg_home):
    from conftest import memreg_cli

    cards_dir().mkdir(parents=True)
    (cards_dir() / ("ab" * 32 + ".md")).write_text("a card an older memreg left")
    (cards_dir() / f"{TMP_PREFIX}publish.dead").mkdir()  # a killed publish's: nobody holds its lock
    (cards_dir() / f"{TMP_PREFIX}publish.dead" / "x.md").write_text("card")
    with locked_temp(cards_dir() / f"{TMP_PREFIX}publish.live", folder=True) as live:
        (live / "y.md").write_text("card")
        memreg_cli("cache", "clean", check=True)
        assert [p.name for p in cards_dir().iterdir()] == [live.name] and (live / "y.md").exists()
