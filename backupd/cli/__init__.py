"""The ``backupd`` command line: parse -> call -> exit code.

Errors become exit codes in one place (``main``): a usage error (unknown
command or option, a missing argument, a value out of range) prints one line
and exits 2, as click does; a ConfigError prints ``file:line: message`` and
exits 1; anything unexpected shows a traceback.
"""

from __future__ import annotations

import sys

import typer

from backupd import __version__
from backupd.errors import BackupdError
from backupd.ops.daemon import error_line

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,  # plain click-style help and errors, no boxes
    pretty_exceptions_enable=False,
    help="backupd: an rsyncd-compatible backup server that keeps every version.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"backupd {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """backupd: an rsyncd-compatible backup server that keeps every version."""


def _register() -> None:
    from backupd.cli import (  # noqa: F401 - registers their commands
        catalog,
        history,
        pusher,  # noqa: F401 - watch, push, status
        serve,
    )


def usage_error_line(exc: BaseException) -> str | None:
    """One line for a click/typer usage error, or None if ``exc`` is not one.

    Typer 0.29 bundles its own click, so the exception classes are matched by
    shape (``exit_code`` and ``format_message``), not by import.
    """
    if not (hasattr(exc, "exit_code") and callable(getattr(exc, "format_message", None))):
        return None
    ctx = getattr(exc, "ctx", None)
    where = getattr(ctx, "command_path", None) or "backupd"
    return f"{where}: error: {exc.format_message()} (see '{where} --help')"


def main() -> None:
    """Console entry point."""
    _register()
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of raising it
    except BackupdError as exc:  # ConfigError included: one line, exit 1 (ops/daemon.error_line)
        typer.echo(error_line(exc), err=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:
        line = usage_error_line(exc)
        if line is None:
            raise
        typer.echo(line, err=True)
        sys.exit(exc.exit_code)
    if isinstance(code, int) and code:
        sys.exit(code)
