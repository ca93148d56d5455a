"""`python -m pipeline <command>`: one click group; each command lives in its stage's module.

Commands are imported only when invoked, so `--help` stays fast and a stage's heavy imports
(torch, kaggle, optuna) never slow another stage down.
"""
from __future__ import annotations

import importlib
import logging
import sys

import click

from pipeline.errors import PipelineError

# command name -> "module:attribute" of its click.Command
COMMANDS = {
    "data": "pipeline.data.stage:command",
    "info": "pipeline.info:command",
    "train": "pipeline.train.stage:command",
    "predict": "pipeline.predict:command",
    "ensemble": "pipeline.ensemble:command",
    "validate": "pipeline.submission:validate_command",
    "submit": "pipeline.submit:command",
    "sweep": "pipeline.sweep:command",
    "report": "pipeline.report:command",
    "compare": "pipeline.report:compare_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Image-classification competitions: data -> train -> predict -> ensemble -> submit."""
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="pipeline", standalone_mode=False)
    except PipelineError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
