"""``quotagate db migrate``: create or upgrade quotagate's tables."""

from __future__ import annotations

import click

from quotagate.cli.app import App, pass_app
from quotagate.store import open_store


@click.group("db")
def group() -> None:
    """The store's tables."""


@group.command("migrate")
@click.option("--print", "print_only", is_flag=True, help="Print the statements instead of running them.")
@pass_app
def migrate(app: App, print_only: bool) -> None:
    """Create or upgrade the tables quotagate needs in the store."""
    with open_store(app.config.store) as store:  # not app.store(): that migrates SQLite on its own
        if print_only:
            statements = store.migration_sql()
            click.echo("\n\n".join(statements) if statements else "-- the store is up to date")
            return
        applied = store.migrate()
    click.echo("\n".join(f"applied {a}" for a in applied) if applied else "the store is up to date")


def register(cli: click.Group) -> None:
    cli.add_command(group)
