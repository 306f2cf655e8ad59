"""``quotagate postfix-config``: the check_policy_service settings for Postfix."""

from __future__ import annotations

import click

from quotagate.cli.app import App, pass_app
from quotagate.mta import postfix


@click.command("postfix-config")
@click.option(
    "--warn-port",
    type=click.IntRange(1, 65535),
    help="Also print a master.cf smtpd on 127.0.0.1:PORT without the check, for [warn] smtp.",
)
@pass_app
def postfix_config(app: App, warn_port: int | None) -> None:
    """Print the main.cf settings that make Postfix ask quotagate serve at RCPT time."""
    try:
        click.echo(postfix.main_cf(app.config), nl=False)
        if warn_port is not None:
            click.echo(postfix.warn_service(warn_port), nl=False)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def register(cli: click.Group) -> None:
    cli.add_command(postfix_config)
