"""Log records as lines for people (and for log files): what the CLI prints on stderr.

INFO is the bare message ("epoch 3/30 train_loss ..."), warnings and errors start with
"warning: " / "error: ", and logger names appear only at -vv, where they help debugging.
"""
from __future__ import annotations

import logging


class PlainFormatter(logging.Formatter):
    def __init__(self, show_names: bool = False):
        super().__init__()
        self.show_names = show_names

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        if self.show_names:
            return f"{record.levelname.lower()} {record.name}: {text}"
        return text if record.levelno == logging.INFO else f"{record.levelname.lower()}: {text}"


def configure(verbose: int) -> None:
    """INFO and up by default, DEBUG with -v/-vv (names shown at -vv), on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(PlainFormatter(show_names=verbose >= 2))
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose + 1, 2), handlers=[handler])
