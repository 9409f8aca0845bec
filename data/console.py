"""What every command-line program shares: a ``UserError`` is one sentence and exit status 2.

``@click.command(cls=Command)`` / ``@click.group(cls=Group)`` catch :class:`dsa.errors.UserError`
(of any stage) around the command, print ``error: <sentence>`` on stderr and exit with the error's
``exit_code`` (2); so is a full disk (an ``OSError`` ENOSPC/EDQUOT from any writer that did not say
so itself, e.g. a plot). Every other exception is a bug and keeps its traceback.

Before any work they check the environment variables (``dsa.env``) and import the plugins
(``dsa.registry``); each option declares its type and range beside it (click's types, and
:class:`IntRange` for integers that must also be a multiple of something), so that a value that does
not fit is click's one sentence (exit 2) naming the option, the value and what is allowed.
"""
from __future__ import annotations

from typing import Any

import click

from dsa.env import check_environment
from dsa.errors import UserError
from dsa.registry import load_plugins


def root_option(help: str = "Data root (datasets, DSAP stores).") -> Any:
    """The ``--root`` option of every command: ``datasets`` unless ``$DSA_ROOT`` or the option says otherwise."""
    return click.option("--root", default="datasets", show_default=True, envvar=ROOT_ENV, show_envvar=True,
                        type=click.Path(file_okay=False), help=help)

#: environment variable every ``--root`` option reads when the option is not given
ROOT_ENV = "DSA_ROOT"

#: click settings every program uses: -h and --help, defaults shown
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


class IntRange(click.IntRange):
    """click's ``IntRange`` that may also require a multiple of ``multiple_of``."""

    def __init__(self, min: int | None = None, max: int | None = None, multiple_of: int | None = None) -> None:
        super().__init__(min=min, max=max)
        self.multiple_of = multiple_of

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if self.multiple_of and number % self.multiple_of:
            self.fail(f"{number} is not a multiple of {self.multiple_of} ({self._describe_range()})", param, ctx)
        return number


def _guarded(invoke: Any, self: click.Command, ctx: click.Context) -> Any:
    try:
        check_environment()  # every DSA_* variable, before any work
        load_plugins()
        return invoke(self, ctx)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        ctx.exit(e.exit_code)
    except OSError as e:
        from data.io import disk_full_error

        full = disk_full_error(e, e.filename or "a file")
        if full is None:
            raise
        click.echo(f"error: {full}", err=True)
        ctx.exit(full.exit_code)


class Command(click.Command):
    """A click command whose user errors are sentences (exit 2)."""

    def invoke(self, ctx: click.Context) -> Any:
        return _guarded(click.Command.invoke, self, ctx)


class Group(click.Group):
    """A click group whose commands' user errors are sentences (exit 2)."""

    def invoke(self, ctx: click.Context) -> Any:
        return _guarded(click.Group.invoke, self, ctx)
