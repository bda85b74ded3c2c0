"""Many processes against one registry (a local folder, and S3 through moto's HTTP server):
nothing is lost, half-written or silently overwritten."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest

from conftest import REPO
from memreg.registry import Registry

pytestmark = pytest.mark.slow  # spawns many publishers at once

N = 8


@pytest.fixture(params=["local", "s3"])
def shared_url(request, tmp_path):
    if request.param == "local":
        url = str(tmp_path / "shared-registry")
    else:
        url = request.getfixturevalue("s3_url")
    Registry.init(url)
    return url


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "memreg", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ))


def _all(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    return [(p.returncode, *p.communicate(timeout=180)) for p in procs]


def test_concurrent_publishers_of_different_versions_all_land(shared_url, tiny_package):
    procs = [_spawn(["publish", str(tiny_package), "--name", "law", "--version", f"1.0.{i}",
                     "--registry", shared_url, "--json"]) for i in range(N)]
    results = _all(procs)
    assert all(p.returncode == 0 for p in procs), results
    reg = Registry.open(shared_url)
    assert reg.versions("law") == [f"1.0.{i}" for i in range(N)]
    # every publisher's compare-and-swap landed in the package index: none overwrote another's entry
    from memreg.registry.index import index_key
    from memreg.schemas import NameIndex

    index = NameIndex.model_validate_json(reg.store.read(index_key("law")))
    assert sorted(index.versions) == [f"1.0.{i}" for i in range(N)]
    report = reg.verify()
    assert report.ok and len(report.checked_versions) == N


def test_concurrent_publishers_of_one_version_exactly_one_wins(shared_url, tiny_package):
    procs = [_spawn(["publish", str(tiny_package), "--name", "law", "--version", "1.0.0",
                     "--description", f"publisher {i}", "--registry", shared_url]) for i in range(N)]
    results = _all(procs)
    winners = [i for i, p in enumerate(procs) if p.returncode == 0]
    assert len(winners) == 1, results
    for i, (rc, out, err) in enumerate(results):
        if i not in winners:
            assert rc != 0 and "law@1.0.0 already exists" in err and len(err.strip().splitlines()) == 1, err
    reg = Registry.open(shared_url)
    assert reg.resolve("law@1.0.0").description == f"publisher {winners[0]}"
    assert reg.verify().ok


def test_concurrent_tag_moves_form_one_chain(shared_url, tiny_package):
    reg = Registry.open(shared_url)
    for i in range(N):
        reg.publish(tiny_package, name="law", version=f"1.0.{i}")
    procs = [_spawn(["tag", f"law@1.0.{i}", "stable", "--registry", shared_url, "--json"]) for i in range(N)]
    results = _all(procs)
    assert all(p.returncode == 0 for p in procs), results
    moves = [json.loads(out)["data"] for _, out, _ in results]
    # Every mover was told which version it replaced. With no lost update these reports chain:
    # one starts from nothing, each other starts where exactly one earlier move ended.
    previous = [m["previous"] for m in moves]
    assert previous.count(None) == 1
    assert sorted(p for p in previous if p) == sorted(m["version"] for m in moves if m["version"] in previous)
    assert len(set(p for p in previous if p)) == N - 1
    final = reg.resolve("law:stable").version
    assert final not in previous  # the last move is the one nobody replaced
    assert final in {m["version"] for m in moves}


KILLER = textwrap.dedent("""
    import os, signal, sys
    from memreg.registry import store as s
    uploads = 0
    for cls in (s.LocalStore, s.S3Store):
        original = cls.put_file
        def put_file(self, key, local, callback=None, _orig=original):
            global uploads
            uploads += 1
            if uploads == 3:  # two blobs are in; die in the middle of the third
                os.kill(os.getpid(), signal.SIGKILL)
            return _orig(self, key, local) if callback is None else _orig(self, key, local, callback)
        cls.put_file = put_file
    from memreg.cli.main import run
    sys.argv = ["memreg", *sys.argv[1:]]
    run()
""")


def test_publisher_killed_mid_upload_leaves_nothing_visible(shared_url, tiny_package):
    proc = subprocess.run([sys.executable, "-c", KILLER, "publish", str(tiny_package), "--name", "law",
                           "--version", "1.0.0", "--registry", shared_url],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    reg = Registry.open(shared_url)
    assert reg.names() == [] and reg.list() == []
    orphans = reg.store.list("blobs")
    assert len(orphans) == 2
    assert reg.gc(grace=timedelta(hours=1)).removed_blobs == []  # too young: maybe a live upload
    assert sorted(reg.gc(grace=timedelta(0)).removed_blobs) == orphans
    assert reg.store.list("blobs") == []
    rerun = subprocess.run([sys.executable, "-m", "memreg", "publish", str(tiny_package), "--name", "law",
                            "--version", "1.0.0", "--registry", shared_url], capture_output=True, text=True, cwd=REPO)
    assert rerun.returncode == 0, rerun.stderr
    assert reg.verify().ok and reg.versions("law") == ["1.0.0"]


def test_concurrent_publishers_of_distinct_names_all_appear_in_list(shared_url, tiny_package):
    """Each publisher copies its own name's index into the one catalog by compare-and-swap: a copy
    lost to the race only sends `list` to that index, so every name is listed either way."""
    procs = [_spawn(["publish", str(tiny_package), "--name", f"team-{i}", "--version", "1.0.0",
                     "--registry", shared_url, "--json"]) for i in range(N)]
    results = _all(procs)
    assert all(p.returncode == 0 for p in procs), results
    reg = Registry.open(shared_url)
    assert [s.manifest.ref for s in reg.list()] == [f"team-{i}@1.0.0" for i in range(N)]
    from memreg.registry import catalog

    copies = json.loads(reg.store.read(catalog.KEY))["indexes"]  # the reader refreshed what a race lost
    assert sorted(copies) == [f"team-{i}" for i in range(N)]
