"""Defaults of `memreg train` that its command line shows before anything runs.

A module of plain constants, so that building the CLI (every `memreg` command, `memreg list` included)
does not create the pydantic TrainConfig class: that alone took ~80 ms of each process's start-up.
"""

PAPER_K = 1024
DEFAULT_LR = 3e-4  # bench/lr_choice.py: never worse first on law or code; 3e-3 was (code)
DEFAULT_MAX_EPOCHS = 20.0
# Which validation score early stopping and the packaged checkpoint follow (--select-on): base + memory
# at its best weight. bench/select_criterion.py on the recorded curves: on SmolLM2 (-5.3 %) and the law
# quickstart (-2.6 %) the mixture's pick is better, on the toy tracks within 0.7 % either way.
DEFAULT_SELECT_ON = "mixture"
