"""``quotagate postfix-config``: the check_policy_service settings for Postfix."""

from __future__ import annotations

import click

from quotagate.cli.app import App, pass_app
from quotagate.mta import postfix


@click.command("postfix-config")
@pass_app
def postfix_config(app: App) -> None:
    """Print the main.cf settings that make Postfix ask quotagate serve at RCPT time."""
    try:
        click.echo(postfix.main_cf(app.config), nl=False)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def register(cli: click.Group) -> None:
    cli.add_command(postfix_config)
