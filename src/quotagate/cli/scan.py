"""``quotagate scan``: one full or incremental scan, with a progress bar on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from quotagate.cli.app import App, pass_app
from quotagate.scan import Progress as ProgressCallback
from quotagate.scan import run_scan, summary_line


@contextmanager
def _progress_bar() -> Iterator[ProgressCallback | None]:
    if not sys.stderr.isatty():
        yield None
        return
    # No auto-refresh thread: the scan forks worker processes, which must not inherit threads.
    bar = Progress(
        TextColumn("scanning"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        auto_refresh=False,
        transient=True,
    )
    task = bar.add_task("scan", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, refresh=True)

    with bar:
        yield update


@click.command("scan")
@click.option("--full", is_flag=True, help="Read every folder, even those unchanged since the last scan.")
@click.option("--fix-maildirsize", is_flag=True, help="Rewrite maildirsize files that disagree with the files.")
@pass_app
def scan(app: App, full: bool, fix_maildirsize: bool) -> None:
    """Measure every mailbox, store the usage and publish the over-quota set."""
    config = app.config
    store = app.store()
    try:
        with _progress_bar() as progress:
            result = run_scan(config, store, full=full, fix_maildirsize=fix_maildirsize, progress=progress)
    finally:
        store.close()
    click.echo(summary_line(result.summary))
    mismatched = [a for a in result.maildirsize_mismatches if a not in result.maildirsize_fixed]
    if result.maildirsize_fixed:
        click.echo(f"rewrote maildirsize of {len(result.maildirsize_fixed)} mailboxes")
    if mismatched:
        click.echo(
            f"maildirsize disagrees with the files in {len(mismatched)} mailboxes "
            f"(see 'quotagate report'; fix with 'quotagate scan --fix-maildirsize')"
        )


def register(cli: click.Group) -> None:
    cli.add_command(scan)
