"""``dsa-reid precompute|train|eval|search|inspect|export|data ...``: the stages' CLIs under one command.

Installed by the package (``setup.cfg``, ``[options.entry_points] console_scripts``) beside
``python -m data|precompute|train|evaluate`` and the Makefile; each sub-command is the same click command
as its ``python -m`` form (same options, same ``-h``, same exit status 2 for user errors), imported only
when it is used, so ``dsa-reid train`` never loads the evaluation code.  This module sits above the layers
(it is the only one that names every stage) and holds no logic of its own.
"""
from __future__ import annotations

import importlib

import click

from data.console import CONTEXT, Group

#: sub-command -> (module, click object, what it is)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("data.cli", "cli", "dataset statistics and the synthetic dataset (python -m data)"),
    "precompute": ("precompute.__main__", "cli", "DSAP stores: run, inspect (python -m precompute)"),
    "inspect": ("precompute.__main__", "inspect_cmd", "summarise / verify a DSAP store (precompute inspect)"),
    "train": ("train.__main__", "main", "train or resume a run (python -m train)"),
    "eval": ("evaluate.__main__", "cli", "evaluate runs: run, features, compare, search, export (python -m evaluate)"),
    "search": ("evaluate.__main__", "search", "rank a folder of unlabeled crops (evaluate search)"),
    "export": ("evaluate.__main__", "export", "ONNX export of a run's inference model (evaluate export)"),
}


class StageGroup(Group):
    """A group whose sub-commands are the stages' own click commands, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help) for name, (_, _, help) in COMMANDS.items()])


@click.group(cls=StageGroup, context_settings=CONTEXT)
@click.version_option(package_name="dsa-reid", message="%(prog)s %(version)s")
def main() -> None:
    """DSA-reID: precompute DSAP stores, train, evaluate and search (docs/DESIGN.md)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


if __name__ == "__main__":
    main()
