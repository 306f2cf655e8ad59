"""``quotagate scan``: one full or incremental scan, with a progress bar on a terminal, or one every
period with ``--every``; a lock keeps two scans from overlapping."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from quotagate.accounting import Profile, profile_for
from quotagate.cli.app import App, collector_paused, pass_app
from quotagate.config import Config, ConfigError, scan_lock_file
from quotagate.model import Reading
from quotagate.outage import Outage
from quotagate.publish import PublishError
from quotagate.scan import Progress as ProgressCallback
from quotagate.scan import files_of, run_scan, summary_line
from quotagate.scanlock import LockError, LockHeld, parse_duration, run_every, scan_lock

log = logging.getLogger(__name__)

EX_UNAVAILABLE = 69  # sysexits.h: the spool looks vanished (see quotagate.outage), nothing changed
EX_IOERR = 74  # sysexits.h: the published file cannot be written; the store was left unchanged
EX_TEMPFAIL = 75  # sysexits.h: another scan holds the lock, try again later


@contextmanager
def _progress_bar() -> Iterator[ProgressCallback | None]:
    if not sys.stderr.isatty():
        yield None
        return
    # rich only on a terminal: cron and the timers never pay for importing it
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _refused(exc: Outage) -> str:
    return f"scan refused, nothing changed: {exc} (check the spool and the directory; 'scan --force' overrides)"


def _scan_once(app: App, full: bool, fix_maildirsize: bool, set_limit: bool, force: bool) -> None:
    """One scan under the lock; raises LockHeld when another scan runs, Outage when refused."""
    config = app.config
    try:
        with scan_lock(scan_lock_file(config)), app.store() as store, _progress_bar() as progress, collector_paused():
            result = run_scan(
                config,
                store,
                full=full,
                fix_maildirsize=fix_maildirsize,
                set_limit=set_limit,
                force=force,
                progress=progress,
            )
    except LockError as exc:
        raise ConfigError(f"scan.lock_file: {exc}") from None
    if config.scan.metrics_file is not None:
        from quotagate.scanmetrics import write_scan_metrics  # prometheus_client: only when asked for

        try:
            write_scan_metrics(config.scan.metrics_file, result.summary)
        except OSError as exc:  # the scan stands; monitoring sees the timestamp age
            log.error(
                "cannot write scan.metrics_file %s: %s "
                "(the scan was stored; create the directory, or unset metrics_file)",
                config.scan.metrics_file,
                exc.strerror or exc,
            )
    if not app.quiet:
        click.echo(summary_line(result.summary))
    mismatched = [a for a in result.maildirsize_mismatches if a not in result.maildirsize_fixed]
    if result.maildirsize_fixed and not app.quiet:
        click.echo(f"rewrote maildirsize of {len(result.maildirsize_fixed)} mailboxes")
    if mismatched:
        log.warning(
            "maildirsize disagrees with the files in %d mailboxes "
            "(see 'quotagate report'; fix with 'quotagate scan --fix-maildirsize')",
            len(mismatched),
        )
    profile = profile_for(config.spool)
    claimed = [a for a in mismatched if _counted_as_claimed(result.readings[a], config, profile)]
    if claimed:
        log.warning(
            "%d of them claim more than their files hold: counted as claimed, since %s goes by the file"
            " until it claims to be over the limit (a fix lets in the mail it would refuse now)",
            len(claimed),
            profile.program,
        )
    per_folder = [a for a in mismatched if result.readings[a].usage.own_maildirsizes]
    if per_folder:
        log.warning(
            "%d of them keep a maildirsize in folders too (Exim without quota_directory), which no "
            "fix makes agree: quotagate counts their files; set quota_directory in the transport",
            len(per_folder),
        )


@click.command("scan")
@click.option("--full", is_flag=True, help="Read every folder, even those unchanged since the last scan.")
@click.option(
    "--fix-maildirsize",
    is_flag=True,
    help="Rewrite maildirsize files that disagree with the files, keeping their quota definition line.",
)
@click.option(
    "--set-limit",
    is_flag=True,
    help="With --fix-maildirsize: write each limited mailbox's limits as the definition line "
    "(the limit Courier, and Dovecot with '?:' rules, enforce), creating missing files.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Scan even when the spool looks vanished (root missing or unmounted, many mailboxes gone).",
)
@click.option(
    "--every",
    metavar="DURATION",
    callback=_duration,
    help="Scan again every DURATION (30s, 5m, 1h; plain number = seconds), start to start, until "
    "SIGTERM or SIGINT, which stop it between scans. A round that finds the lock held is skipped.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    metavar="N",
    help="With --every: stop after N rounds (skipped ones included).",
)
@pass_app
def scan(
    app: App,
    full: bool,
    fix_maildirsize: bool,
    set_limit: bool,
    force: bool,
    every: float | None,
    count: int | None,
) -> int:
    """Measure every mailbox, store the usage and publish the over-quota set.

    Only one scan runs at a time: each holds the lock file [scan] lock_file while it runs
    (default: beside quotagate's SQLite file, else /run/quotagate/scan.lock).

    \b
    Exit status:
      0   done (with --every: stopped by SIGTERM/SIGINT or --count)
      2   usage or config error (including a lock file that cannot be opened)
      69  refused, nothing changed: the spool root is missing or not mounted, or more than
          [scan] max_vanished of the mailboxes vanished (--force overrides)
      74  the [publish] file cannot be written: nothing stored either
      75  another scan is running (the lock is held): try again later
    """
    if set_limit and not fix_maildirsize:
        raise click.UsageError("--set-limit needs --fix-maildirsize")
    if every is None:
        if count is not None:
            raise click.UsageError("--count needs --every")
        try:
            _scan_once(app, full, fix_maildirsize, set_limit, force)
        except LockHeld as exc:
            click.echo(f"quotagate: {exc}", err=True)
            return EX_TEMPFAIL
        except Outage as exc:
            click.echo(f"quotagate: {_refused(exc)}", err=True)
            return EX_UNAVAILABLE
        except PublishError as exc:
            click.echo(f"quotagate: {exc}; nothing stored", err=True)
            return EX_IOERR
        return 0

    forced = force

    def round_() -> None:
        nonlocal forced
        try:
            _scan_once(app, full, fix_maildirsize, set_limit, forced)
        except LockHeld as exc:
            log.warning("%s: skipping this round", exc)
        except Outage as exc:
            log.error("%s", _refused(exc))
        except PublishError as exc:
            log.error("%s; nothing stored, trying again next round", exc)
        else:
            forced = False  # --force overrides the guard once, not for every round

    run_every(every, round_, count)
    return 0


def register(cli: click.Group) -> None:
    cli.add_command(scan)


def _counted_as_claimed(r: Reading, config: Config, profile: Profile) -> bool:
    """A reading that counts more than its files, bytes or messages: its maildirsize's claims
    (see :func:`quotagate.accounting.enforced`)."""
    files = files_of(r.usage, config, profile)
    return r.bytes > files[0] or r.messages > files[1]
