"""memreg.train: the training pipeline (datastore -> index -> kNN targets -> training -> evaluation -> package).

    from memreg.train import TrainConfig, train
    result = train(TrainConfig(corpus=["docs/"], teacher="big", init="small", out="law-memory"))

One module per stage: corpus, datastore, index, knn, loss + trainer, packaging; `pipeline` runs them
with caching and resume. Importing this package is light: the public names load on first use
(importing `memreg.train.config` for a default, as `memreg train`'s options do, does not import the
pipeline, numpy or torch), and torch and faiss load when a stage runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memreg.core.lazy import make_callable

if TYPE_CHECKING:
    from memreg.train.config import TrainConfig
    from memreg.train.pipeline import TrainResult, train
    from memreg.train.progress import TrainProgress

__all__ = ["TrainConfig", "TrainProgress", "TrainResult", "train"]

# public name -> the submodule that defines it
_LAZY = {
    "TrainConfig": "memreg.train.config",
    "TrainProgress": "memreg.train.progress",
    "TrainResult": "memreg.train.pipeline",
    "train": "memreg.train.pipeline",
}


# `memreg.train` is this package *and* the function: `memreg.train(config)` runs the pipeline.
make_callable(__name__, "train")
