"""The ``backupd`` command line: parse -> call -> exit code.

Errors become exit codes in one place (``main``): a ConfigError prints
``file:line: message`` and exits 1; anything unexpected shows a traceback.
"""

from __future__ import annotations

import sys

import typer

from backupd.errors import BackupdError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="backupd: an rsyncd-compatible backup server.")


@app.callback()
def _root() -> None:
    """backupd: an rsyncd-compatible backup server that keeps every version."""


def _register() -> None:
    from backupd.cli import (  # noqa: F401 - registers their commands
        history,
        pusher,  # noqa: F401 - watch, push, status
        serve,
    )


def main() -> None:
    """Console entry point."""
    _register()
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of raising it
    except ConfigError as exc:
        typer.echo(f"backupd: config error: {exc}", err=True)
        sys.exit(1)
    except BackupdError as exc:
        typer.echo(f"backupd: {exc}", err=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
