"""``quotagate warn``: mail users whose mailbox crossed a threshold or will be full soon."""

from __future__ import annotations

import click

from quotagate.cli.app import App, pass_app
from quotagate.text import printable
from quotagate.warnjob import run_warn


@click.command("warn")
@click.option("--dry-run", is_flag=True, help="Show the warnings due; send none, record nothing.")
@pass_app
def warn(app: App, dry_run: bool) -> int:
    """Warn users past a [warn] threshold or forecast to be full soon, once per crossing.

    Exit 0 when every warning due was sent (or none was due), 1 when one could not be.
    """
    with app.store() as store:
        outcomes = run_warn(app.config, store, dry_run=dry_run)
    for o in outcomes:
        if not app.quiet or o.status.startswith("failed"):
            click.echo(f"{printable(o.address)}: {o.notice}: {printable(o.status)}")
    failed = sum(o.status.startswith("failed") for o in outcomes)
    if not app.quiet:
        verb = "due" if dry_run else "sent"
        click.echo(
            f"{sum(o.status in ('sent', 'would send') for o in outcomes)} warnings {verb}, {failed} failed", err=True
        )
    return 1 if failed else 0


def register(cli: click.Group) -> None:
    cli.add_command(warn)
