"""``quotagate report``: usage per mailbox as a table, JSON or CSV."""

from __future__ import annotations

import csv
import json
import sys
import time
from typing import Any

import click

from quotagate.accounting import profile_for
from quotagate.cli.app import App, pass_app
from quotagate.history import DAY
from quotagate.htmlreport import render_html
from quotagate.report import COLUMNS, csv_cell, forecasts, rows, selected
from quotagate.scan import files_of
from quotagate.sizes import format_size, parse_percent
from quotagate.text import printable

_STYLE = {"over": "bold red", "unknown": "yellow", "ok": "green"}


def _table(data: list[dict[str, Any]]) -> None:
    """Every cell a :class:`Text`, never a string rich would read as markup, names escaped."""
    from rich.console import Console  # rich only for the table: json and csv never load it
    from rich.table import Table
    from rich.text import Text

    table = Table("address", "used", "messages", "quota", "%", "state", "forecast", "maildirsize", "note")
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
            Text(str(row["forecast"] or "")),
            Text(_maildirsize_cell(str(row["maildirsize"] or ""))),
            Text(printable(str(row["reason"] or ""))),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: never squeeze addresses into 80 columns
    console.print(table)


def _maildirsize_cell(text: str) -> str:
    """The first word of the maildirsize column (the JSON and CSV have it all)."""
    word = text.partition(":")[0].partition(";")[0]
    return f"{word}, per folder" if "of their own" in text else word


@click.command("report")
@click.option("--over", is_flag=True, help="Only mailboxes over quota.")
@click.option(
    "--domain", "domains", multiple=True, metavar="DOMAIN", help="Only mailboxes of this domain (repeatable)."
)
@click.option("--above", metavar="PERCENT", help="Only mailboxes at or above this share of a limit (90%).")
@click.option(
    "--filling",
    type=click.FloatRange(min=0),
    is_flag=False,
    flag_value=7.0,
    default=None,
    metavar="[DAYS]",
    help="Only mailboxes forecast to be full within DAYS (7 when not given).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv", "html"]), default="table", show_default=True
)
@pass_app
def report(app: App, over: bool, domains: tuple[str, ...], above: str | None, filling: float | None, fmt: str) -> None:
    """Usage per mailbox, with when each will be full at its recent rate."""
    try:
        share = None if above is None else parse_percent(above)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--above") from None
    now = time.time()
    with app.store() as store:
        mailboxes, readings = store.mailboxes(), store.readings()
        history = store.history(now - app.config.history.forecast_days * DAY)
    predicted = forecasts(mailboxes, readings, history, now)
    config = app.config
    profile = profile_for(config.spool)
    data = rows(
        mailboxes,
        readings,
        over_only=over,
        predicted=predicted,
        now=now,
        accounting=config.spool.accounting,
        files=lambda r: files_of(r.usage, config, profile),
    )
    data = selected(data, domains, share, filling, now)
    if fmt == "html":  # the filters pick the mailboxes; the page shows them its own way
        picked = {row["address"] for row in data}
        shown = [m for m in mailboxes if m.address in picked]
        click.echo(render_html(shown, readings, history, predicted, now, app.config.history.forecast_days), nl=False)
        return
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
