"""Old name of `memreg.train.packaging`, kept only because `trainer.py` (being moved to accelerate
DDP by its owner) still imports `replace_folder` from here. Import from `memreg.train.packaging`;
delete this file once trainer.py does.
"""

from memreg.train.packaging import replace_folder

__all__ = ["replace_folder"]
