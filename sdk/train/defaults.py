"""Defaults of `memreg train` that its command line shows before anything runs.

A module of plain constants, so that building the CLI (every `memreg` command, `memreg list` included)
does not create the pydantic TrainConfig class: that alone took ~80 ms of each process's start-up.
"""

PAPER_K = 1024
DEFAULT_LR = 3e-4  # bench/lr_choice.py: never worse first on law or code; 3e-3 was (code)
DEFAULT_MAX_EPOCHS = 20.0
# Which validation score early stopping and the packaged checkpoint follow (--select-on): the memory's
# own loss. Selecting on base + memory wins on the validation curves it selects on (bench/select_criterion.py)
# but lost on held-out documents: the law quickstart's memory packaged by the mixture rule gave 13.5
# (memreg-base-small) and 13.6 (-large) held-out perplexity against 12.96 and 13.00 by the memory rule,
# the memory alone 15.2 against 14.3 (memreg train's validation split shares 50 % of its 8-grams with
# training, which rewards the later, more memorising checkpoint). README, "Training".
DEFAULT_SELECT_ON = "memory"
