"""Defaults of `memreg train` that its command line shows before anything runs.

A module of plain constants, so that building the CLI (every `memreg` command, `memreg list` included)
does not create the pydantic TrainConfig class: that alone took ~80 ms of each process's start-up.
"""

PAPER_K = 1024
DEFAULT_LR = 3e-4  # bench/lr_choice.py: never worse first on law or code; 3e-3 was (code)
DEFAULT_MAX_EPOCHS = 20.0
