"""``quotagate exim-config``: the Exim configuration for the configured store."""

from __future__ import annotations

import click

from quotagate.cli.app import App, pass_app
from quotagate.mta import exim


@click.command("exim-config")
@click.option(
    "--method",
    type=click.Choice(["router", "acl", "policy"]),
    default="router",
    show_default=True,
    help="router/acl: look the published over-quota set up; policy: ask quotagate serve, with SIZE=.",
)
@click.option(
    "--lookup",
    type=click.Choice(["sqlite", "mysql", "pgsql", "ldap", "lsearch"]),
    help="Which published copy Exim reads [default: the configured store].",
)
@click.option(
    "--section",
    type=click.Choice(["main", "routers", "acl", "transports"]),
    help="Print only the part for this section of Exim's configuration.",
)
@click.option(
    "--on-store-error",
    type=click.Choice(["accept", "defer"]),
    default="accept",
    show_default=True,
    help="router/acl: when the lookup cannot be done (store down, query error), accept and log, or defer (451).",
)
@pass_app
def exim_config(
    app: App,
    method: exim.Method,
    lookup: exim.Lookup | None,
    section: exim.Section | None,
    on_store_error: exim.OnStoreError,
) -> None:
    """Print the Exim router or ACL that refuses over-quota mailboxes at RCPT time."""
    try:
        parts = exim.parts(app.config, method, lookup, on_store_error)
    except exim.EximConfigError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(exim.render(parts, section), nl=False)


def register(cli: click.Group) -> None:
    cli.add_command(exim_config)
