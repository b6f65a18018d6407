"""How the commands report what a user did wrong: one line on stderr and an exit status.

A user error (afmc.io.user_errors) prints `error: ...` (its `cli_message` when it has one: the
Python API's messages name Python arguments, the command line's its flags) and exits 1,
every InputWarning one
line `warning: ...`; SIGINT exits 130 and SIGTERM 143 with one line; other errors keep
their traceback.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import typer


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a user error as one line `error: ...` and exit 1, and every InputWarning as
    one line `warning: ...` (afmc.io.user_errors); other errors keep their traceback."""
    from afmc.io.interrupts import Terminated
    from afmc.io.user_errors import InputWarning, is_user_error, user_message

    show = warnings.showwarning

    def show_input_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            show(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", InputWarning)
            warnings.showwarning = show_input_warning
            yield
    except Exception as error:
        if not is_user_error(error):
            raise
        message = getattr(error, "cli_message", None) or user_message(error)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(130) from None
    except Terminated as stop:
        typer.echo("error: terminated", err=True)
        raise typer.Exit(stop.code) from None


@contextlib.contextmanager
def afmc_warnings() -> Iterator[None]:
    """Print each named afmc warning (its class is defined in afmc) as `warning: ...`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        if warning.category.__module__.startswith("afmc."):
            typer.echo(f"warning: {warning.message}", err=True)
