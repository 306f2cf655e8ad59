"""The ``quotagate`` command: one module per command group, each thin over the core."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from quotagate.address import BadAddress
from quotagate.cli import check, db, demo, exim, mailbox, postfix, report, reservations, scan, serve, warn, watch
from quotagate.cli.app import App, cli
from quotagate.errors import QuotagateError, one_line

for module in (mailbox, scan, report, check, demo, db, exim, postfix, serve, watch, reservations, warn):
    module.register(cli)

EXIT_USAGE = 2


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
    except SQLAlchemyError as exc:  # a store that broke mid-way: say what the database said
        reason = one_line(str(exc.orig if isinstance(exc, DBAPIError) else exc))
        click.echo(f"quotagate: store error: {reason}", err=True)
        return EXIT_USAGE
    return result if isinstance(result, int) else 0


def entry_point() -> None:
    sys.exit(main())


__all__ = ["App", "cli", "main"]
