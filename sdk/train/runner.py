"""The stage runner of `memreg train`: one work folder, one key per stage, resume after a kill.

Each stage writes into `<work_dir>/<stage>-<key>/`, where the key hashes the stage's settings and
the key of the stage before (so the corpus, the tokenizer and the models are in every key), and
marks itself done by writing `meta.json` last. A re-run skips finished stages and resumes the
unfinished one. A work folder made for another corpus or other settings is refused (`run.json`).
The stage bodies live in `stages.py` and `memory_stages.py`; this file knows nothing about them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memreg.core.fsutil import atomic_write_json
from memreg.train.config import TrainConfig
from memreg.core.errors import WorkDirMismatchError
from memreg.train.progress import TrainProgress

if TYPE_CHECKING:
    from memreg.train.distributed import Dist

Meta = dict[str, Any]


class StageRunner:
    """State shared by the stages of one run: settings, work folder, stage keys, processes, notes."""

    def __init__(self, config: TrainConfig, progress: TrainProgress, dist: Dist) -> None:
        self.dist = dist
        self.cfg, self.progress = config, progress if dist.is_main else TrainProgress()  # one process draws
        self.device = dist.device(config.device)
        self.work = config.resolved_work_dir()
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.keys: dict[str, str] = {}

    def note(self, message: str, *, warning: bool = False) -> None:
        self.notes.append(message)
        if warning:
            self.warnings.append(message)
        self.progress.note(message, warning=warning)

    def stage_dir(self, stage: str) -> Path:
        return self.work / f"{stage}-{self.keys[stage][:12]}"

    def cached(self, stage: str) -> Meta | None:
        meta = self.stage_dir(stage) / "meta.json"
        return json.loads(meta.read_text()) if meta.exists() else None

    def run(self, stage: str, body: Callable[[], Meta | None], *, label: str, total: int, unit: str,
            all_processes: bool = False) -> Meta:
        """The skeleton every stage shares: reuse a finished result, or run `body` (which advances
        the progress bar and returns the stage's metadata) and mark the stage done.
        `all_processes`: every process runs `body`; process 0's metadata is the result."""
        cached = self.cached(stage)
        self.progress.stage(label, total=total, unit=unit, cached=cached is not None)
        if cached is None:
            self.stage_dir(stage).mkdir(parents=True, exist_ok=True)
            meta = body()
            if self.dist.is_main:
                assert meta is not None, f"stage {stage} returned no metadata"
                cached = self.finish(stage, meta)
            if all_processes:
                cached = self.shared(stage, cached)
        else:
            self.progress.advance(total)
        self.progress.end_stage()
        assert cached is not None
        return cached

    def main_first(self, fn: Callable[[], Any]) -> Any:
        """Process 0 runs `fn` (a stage); the others wait, then run it too and find it cached."""
        result = fn() if self.dist.is_main else None
        self.dist.barrier()
        return result if self.dist.is_main else fn()

    def shared(self, stage: str, meta: Meta | None) -> Meta:
        """After a stage all processes ran: process 0 has written `meta`; the others read it."""
        self.dist.barrier()
        if self.dist.is_main:
            assert meta is not None
            return meta
        cached = self.cached(stage)
        assert cached is not None, f"process 0 did not finish stage {stage}"
        return cached

    def finish(self, stage: str, meta: Meta) -> Meta:
        atomic_write_json(self.stage_dir(stage) / "meta.json", {"key": self.keys[stage], **meta}, indent=1)
        return meta


def claim_work_dir(runner: StageRunner, claim: dict[str, Any]) -> None:
    """Mark the work folder as this run's, or refuse it when it holds another corpus or settings."""
    path = runner.work / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != claim:
            raise WorkDirMismatchError(f"work folder {runner.work} was made for {_differences(old, claim)}: "
                                       "pass another --work-dir, or delete that folder to start over")
        return
    if runner.work.exists() and any(runner.work.iterdir()):
        raise WorkDirMismatchError(f"work folder {runner.work} is not empty and holds no memreg run: pass another --work-dir")
    runner.work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(claim, indent=1))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old.get("corpus_digest") != new["corpus_digest"]:
        return f"another corpus ({old.get('corpus_digest', '?')[:19]}..., this one is {new['corpus_digest'][:19]}...)"
    if old.get("tokenizer") != new["tokenizer"] or old.get("models") != new["models"]:
        return "other teacher/init models"
    a, b = old.get("settings", {}), new["settings"]
    diff = [f"{k}={a.get(k)!r} (now {b.get(k)!r})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "other settings: " + ", ".join(diff)
