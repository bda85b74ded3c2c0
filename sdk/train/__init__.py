"""memreg.train: the training pipeline (datastore -> index -> kNN targets -> training -> evaluation -> package).

    from memreg.train import TrainConfig, train
    result = train(TrainConfig(corpus=["docs/"], teacher="big", init="small", out="law-memory"))

One module per stage: corpus, datastore, index, knn, loss + trainer, packaging; `pipeline` runs them
with caching and resume. Importing this package is light; torch and faiss load when a stage runs.
"""

from memreg.train.config import TrainConfig
from memreg.train.pipeline import TrainResult, train
from memreg.train.progress import TrainProgress

__all__ = ["TrainConfig", "TrainProgress", "TrainResult", "train"]


class _CallableModule(__import__("types").ModuleType):
    """`memreg.train` is this package *and* the function: `memreg.train(config)` runs the pipeline.

    (A package attribute named like a submodule is replaced by the submodule on import, so a lazy
    re-export of the function under the same name would break as soon as `memreg.train.x` loads.)
    """

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
