"""``quotagate mailbox add|list|import``: the embedded directory."""

from __future__ import annotations

from typing import BinaryIO

import click

from quotagate.address import normalize
from quotagate.cli.app import App, pass_app
from quotagate.mailbox_csv import OPTIONAL, CsvError, parse_mailboxes
from quotagate.model import Limits, Mailbox
from quotagate.sizes import MAX_COUNT, format_size, parse_size
from quotagate.text import control_character, printable


def _size(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _no_control(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refused as import refuses it: a NUL in a path would break every later scan."""
    found = None if value is None else control_character(value)
    if found is not None:
        raise click.BadParameter(f"holds a control character ({found})", param=param)
    return value


@click.group("mailbox")
def group() -> None:
    """Manage the mailboxes of the embedded directory."""


@group.command("add")
@click.argument("address", callback=_no_control)
@click.option(
    "--quota", callback=_size, help="Size limit: 500M, 2G, 1.5GiB or bytes; 0 = unlimited. Needed for a new mailbox."
)
@click.option(
    "--messages", type=click.IntRange(min=0, max=MAX_COUNT), help="Message limit; 0 = unlimited [default: 0]."
)
@click.option(
    "--path",
    callback=_no_control,
    help="Where its mail lives (relative to [spool] root), if not the spool layout; '' = the spool layout.",
)
@click.option("--enabled/--disabled", default=None, help="Checked or never checked [default: enabled].")
@pass_app
def add(
    app: App, address: str, quota: int | None, messages: int | None, path: str | None, enabled: bool | None
) -> None:
    """Add a mailbox, or change an existing one: only what is given changes."""
    address = normalize(address)
    with app.store() as store:
        old = store.mailbox(address)
        if old is None and quota is None:
            raise click.ClickException(f"{printable(address)} is a new mailbox: give its --quota")
        base = old or Mailbox(address, Limits())
        limits = Limits(
            base.limits.bytes if quota is None else quota, base.limits.messages if messages is None else messages
        )
        store.upsert_mailboxes(
            [
                Mailbox(
                    address,
                    limits,
                    base.enabled if enabled is None else enabled,
                    base.path if path is None else path or None,
                )
            ]
        )


@group.command("import")
@click.argument("file", type=click.File("rb"))
@pass_app
def import_(app: App, file: BinaryIO) -> None:
    """Add or update mailboxes from a UTF-8 CSV file (header: address,quota[,messages[,path[,enabled]]]).

    A column the file does not have keeps what is stored for a mailbox already there."""
    try:
        rows = parse_mailboxes(file.read(), printable(file.name))
    except CsvError as exc:
        raise click.ClickException(str(exc)) from None
    with app.store() as store:
        whole = rows.columns == frozenset(OPTIONAL)  # every column given: nothing stored is kept
        mailboxes = rows.mailboxes if whole else rows.over({m.address: m for m in store.mailboxes()})
        store.upsert_mailboxes(mailboxes)
    click.echo(f"imported {len(mailboxes)} mailboxes")


@group.command("list")
@pass_app
def list_(app: App) -> None:
    """List the mailboxes and their limits."""
    with app.store() as store:
        mailboxes = store.mailboxes()
    from rich.console import Console  # rich only for the commands that draw a table
    from rich.table import Table
    from rich.text import Text

    table = Table("address", "quota", "messages", "enabled", "path")
    for m in mailboxes:  # Text cells: rich never reads a name as markup
        table.add_row(
            Text(printable(m.address)),
            Text(format_size(m.limits.bytes) if m.limits.bytes else "unlimited"),
            Text(str(m.limits.messages or "unlimited")),
            Text("yes" if m.enabled else "no"),
            Text(printable(m.path or "")),
        )
    Console().print(table)


def register(cli: click.Group) -> None:
    cli.add_command(group)
