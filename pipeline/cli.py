"""`python -m pipeline <command>`: one click group; each command lives in its stage's module.

Commands are imported only when invoked, so `--help` stays fast and a stage's heavy imports
(torch, kaggle, optuna) never slow another stage down.
"""
from __future__ import annotations

import importlib
import sys

import click

from pipeline import console
from pipeline.errors import PipelineError

# command name -> ("module:attribute" of its click.Command, one-line help shown by --help)
COMMANDS = {
    "data": ("pipeline.data.stage:command", "Prepare data/<competition>: raw files, arrays, meta.json, split."),
    "info": ("pipeline.info:command", "Per-layer output shapes, parameters and MACs of a model."),
    "train": ("pipeline.train.stage:command", "Train a model into checkpoints/<run>."),
    "predict": ("pipeline.predict:command", "Val and test logits of a run, with TTA."),
    "ensemble": ("pipeline.ensemble:command", "Blend runs' logits into predictions.csv."),
    "validate": ("pipeline.submission:validate_command", "Check a predictions file against the sample submission."),
    "submit": ("pipeline.submit:command", "Validate, then upload to Kaggle; every try goes in the ledger."),
    "sweep": ("pipeline.sweep:command", "Grid or random search of training settings (Optuna)."),
    "lab": ("pipeline.lab:command", "A course lab's experiments (configs/labs/NAME.yaml), ours beside the report's."),
    "report": ("pipeline.report:command", "One self-contained HTML report of a run."),
    "compare": ("pipeline.report:compare_command", "Overlay the curves of several runs and tabulate them."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # From the table above, so `--help` imports no stage (and no torch).
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Image-classification competitions: data -> train -> predict -> ensemble -> submit."""
    console.configure(verbose)  # plain lines: no "INFO pipeline.train.engine:" prefixes


def main(argv: list[str] | None = None) -> None:
    try:
        # Without standalone mode click returns ctx.exit(n)'s code instead of exiting with it.
        code = cli.main(args=argv, prog_name="pipeline", standalone_mode=False)
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
    if isinstance(code, int) and code:
        sys.exit(code)
