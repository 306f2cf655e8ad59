"""``quotagate report``: usage per mailbox as a table, JSON or CSV."""

from __future__ import annotations

import csv
import json
import sys
import time
from typing import Any

import click

from quotagate.cli.app import App, pass_app
from quotagate.report import COLUMNS, csv_cell, rows
from quotagate.sizes import format_size
from quotagate.text import printable

_STYLE = {"over": "bold red", "unknown": "yellow", "ok": "green"}


def _table(data: list[dict[str, Any]]) -> None:
    """Every cell a :class:`Text`, never a string rich would read as markup, names escaped."""
    from rich.console import Console  # rich only for the table: json and csv never load it
    from rich.table import Table
    from rich.text import Text

    table = Table("address", "used", "messages", "quota", "%", "state", "maildirsize", "note")
    for row in data:
        quota = row["quota_bytes"]
        known = row["bytes"] is not None
        msgs = f"{row['messages']}" + (f"/{row['quota_messages']}" if row["quota_messages"] else "")
        table.add_row(
            Text(printable(str(row["address"]))),
            Text(format_size(row["bytes"]) if known else "?"),
            Text(msgs if known else "?"),
            Text(format_size(quota) if isinstance(quota, int) and quota else "unlimited"),
            Text("" if row["percent"] is None else f"{row['percent']}"),
            Text(str(row["state"]), style=_STYLE[str(row["state"])]),
            Text("" if not row["maildirsize"] else str(row["maildirsize"]).partition(":")[0]),
            Text(printable(str(row["reason"] or ""))),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: never squeeze addresses into 80 columns
    console.print(table)


@click.command("report")
@click.option("--over", is_flag=True, help="Only mailboxes over quota.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@pass_app
def report(app: App, over: bool, fmt: str) -> None:
    """Usage per mailbox."""
    with app.store() as store:
        data = rows(store.mailboxes(), store.readings(), over_only=over)
    if fmt == "json":  # names exactly as stored: json.dumps escapes control characters and non-ASCII
        click.echo(json.dumps(data, indent=2))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in data)
    else:
        _table(data)
        if not data:
            click.echo("no mailboxes" + (" over quota" if over else ""), err=True)
        else:
            click.echo(f"{len(data)} mailboxes, as of {time.strftime('%Y-%m-%d %H:%M:%S')}", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(report)
