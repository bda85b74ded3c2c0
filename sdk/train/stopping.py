"""When to stop training the memory decoder, and which checkpoint to package.

Every `eval_every` optimizer steps the trainer scores the validation documents (the held-out
documents of the training corpus) and hands the point to `EarlyStopping`, which judges one of its
fields (`monitor`): the memory's own validation loss, or the loss of base + memory at the best weight
of the grid (`CRITERIA`, `--select-on`). The best point so far is the one to package; after `patience`
evaluations without an improvement of at least `min_delta` nats the run stops. Patience starts once a
trained checkpoint has beaten the untrained init (the point at step 0): under `--select-on mixture`
base + memory cannot beat the base alone (weight 0) until the memory has learned enough to earn a
weight (a SmolLM2 stub of 4 blocks starts at 5.7 x 10^7 validation perplexity), and counting those
evaluations would stop the run after `patience` of them and package the untrained init. The budget
(--max-epochs, --max-minutes, --steps) still bounds such a run. The state is plain JSON, saved with
every checkpoint, so a resumed run takes exactly the decisions an uninterrupted one would have taken.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# --select-on -> the validation point's field it judges (nats per token; lower is better)
CRITERIA = {"memory": "val_loss", "mixture": "val_loss_with_base"}


@dataclass
class EarlyStopping:
    patience: int | None  # None: never stop early (a fixed --steps/--epochs run still keeps the best)
    min_delta: float = 1e-3  # nats of validation loss that count as an improvement (0.1 % perplexity)
    monitor: str = "val_loss"  # the field judged; states saved before the option judged the memory's loss
    best_loss: float = math.inf
    best_step: int = -1
    bad_evaluations: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)

    def record(self, step: int, point: dict[str, Any]) -> bool:
        """Add an evaluation point (it must hold the `monitor` field); True when it is the new best."""
        loss = float(point[self.monitor])
        improved = loss < self.best_loss - self.min_delta  # the first finite point always improves on inf
        self.curve.append({"step": step, **point})
        if improved:
            self.best_loss, self.best_step, self.bad_evaluations = loss, step, 0
        elif self.best_step != 0:  # while the untrained init is the best, patience has not started
            self.bad_evaluations += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evaluations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "EarlyStopping":
        return cls(**state)
