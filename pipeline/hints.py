"""Advice in the user's own terms: a flag to add is `--resume` on the command line, but
`TRAIN_ARGS=--resume` (or `RUN=NAME`) to someone who ran `make`, who never typed the flags.

GNU make exports MAKELEVEL to every recipe, so a stage knows that make started it without the
Makefile having to say so.
"""
from __future__ import annotations

import os

# train flags the Makefile has a variable of its own for; every other flag goes through TRAIN_ARGS
MAKE_VARIABLES = {"--run": "RUN", "--model": "MODEL", "--epochs": "EPOCHS", "--device": "DEVICE",
                  "--config": "CONFIG"}


def under_make() -> bool:
    return bool(os.environ.get("MAKELEVEL"))


def train_flag(flag: str, value: str | None = None) -> str:
    """How to give the train stage `flag` (with `value`): '--run NAME', and under make also the
    variable that passes it: '--run NAME (make: RUN=NAME)'. Both, since the make running us may be
    someone else's Makefile."""
    cli = flag if value is None else f"{flag} {value}"
    if not under_make():
        return cli
    variable = MAKE_VARIABLES.get(flag)
    if variable and value is not None:
        return f"{cli} (make: {variable}={value})"
    return f"{cli} (make: TRAIN_ARGS={flag})" if value is None else f"{cli} (make: TRAIN_ARGS='{cli}')"
