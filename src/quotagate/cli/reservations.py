"""``quotagate reservations``: the room the running daemon holds, and letting it go."""

from __future__ import annotations

from typing import Any

import click

from quotagate.address import normalize
from quotagate.cli.app import App, pass_app
from quotagate.policy.control import ControlError, ask
from quotagate.text import printable


@click.command("reservations")
@click.argument("address", required=False)
@click.option("--release", "release", metavar="ADDRESS", help="Release the room held for ADDRESS.")
@click.option("--all", "release_all", is_flag=True, help="Release all room held, for every mailbox.")
@pass_app
def reservations(app: App, address: str | None, release: str | None, release_all: bool) -> None:
    """List the room quotagate serve holds for mail in flight (for ADDRESS, or every mailbox),
    through its control socket ([policy] control_socket, root only)."""
    path = app.config.policy.control_socket
    try:
        if release or release_all:
            if release and release_all:
                raise click.UsageError("--release ADDRESS or --all, not both")
            request = {"op": "release", "address": normalize(release) if release else None}
            _released(ask(path, request))
            return
        answer = ask(path, {"op": "list", "address": normalize(address) if address else None})
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    rows = answer["reservations"]
    if "shared_error" in answer:
        click.echo(
            f"the shared state is unavailable ({printable(str(answer['shared_error']))}): only this daemon's own room"
            " is listed",
            err=True,
        )
    if not rows:
        click.echo("no room held" + (f" for {printable(address)}" if address else ""))
        return
    click.echo(f"{'address':40} {'state':9} {'bytes':>10} {'age':>7}  client / transaction  held by")
    for row in rows:
        copy = row.get("copy") or ""  # the recipient's detail: each is a copy of its own
        where = row["address"] + (f" (copy {copy})" if copy else "")
        click.echo(
            f"{printable(where):40} {row['state']:9} {row['bytes']:>10} {row['age']:>6}s  "
            f"{printable(row['client'])} / {printable(row['transaction'])}  {printable(row.get('node', 'this daemon'))}"
        )
    if answer.get("more"):
        click.echo(f"and {answer['more']} more held by this daemon, made later: not listed")


def _released(answer: dict[str, Any]) -> None:
    """What went, here and (``[shared] url``) in the shared state; Redis away is said, not fatal."""
    here = f"released {answer['released']} reservations"
    if "shared" in answer:
        click.echo(f"{here} here and {answer['shared']} in the shared state")
    elif "shared_error" in answer:
        click.echo(f"{here} here")
        click.echo(
            f"the shared state is unavailable ({printable(str(answer['shared_error']))}): the room held there stays;"
            " run this again once it is back",
            err=True,
        )
    else:
        click.echo(here)


def register(cli: click.Group) -> None:
    cli.add_command(reservations)
