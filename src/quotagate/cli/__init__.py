"""The ``quotagate`` command: one module per command group, each thin over the core.

The command modules load when their command runs (see :class:`quotagate.cli.app.LazyGroup`):
``--version`` and ``scan`` never pay for the daemon, the terminal UI or the LDAP driver.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from quotagate.address import BadAddress
from quotagate.cli.app import App, cli
from quotagate.errors import QuotagateError, one_line

EXIT_USAGE = 2


def _store_failure(exc: Exception) -> str | None:
    """What the database said, when ``exc`` is a store that broke mid-way; None for anything else.

    Only a command that opened a store has loaded SQLAlchemy: without it, ``exc`` cannot be one.
    """
    if "sqlalchemy.exc" not in sys.modules:
        return None
    from sqlalchemy.exc import SQLAlchemyError

    from quotagate.store.sql import database_said

    return database_said(exc) if isinstance(exc, SQLAlchemyError) else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 usage or config error, others per command)."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="quotagate", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except (QuotagateError, BadAddress) as exc:
        click.echo(f"quotagate: {one_line(str(exc))}", err=True)
        return EXIT_USAGE
    except Exception as exc:
        reason = _store_failure(exc)
        if reason is None:  # a bug: keep its traceback
            raise
        click.echo(f"quotagate: store error: {reason}", err=True)
        return EXIT_USAGE
    return result if isinstance(result, int) else 0


def entry_point() -> None:
    """The console command."""
    sys.exit(main())


__all__ = ["App", "cli", "main"]
