"""``quotagate exim-config``: the Exim configuration for the configured store."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import click

from quotagate.cli.app import App, pass_app
from quotagate.mta import debian as deb
from quotagate.mta import exim
from quotagate.publish import write_atomically

DEBIAN_CONFDIR = "/etc/exim4"
EXIM_GROUP = "Debian-exim"


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
@click.option(
    "--debian",
    is_flag=True,
    help="Files for Debian's exim4-config, hooked in through its MAIN_ACL_CHECK_* macros.",
)
@click.option(
    "--split/--non-split",
    "split",
    default=None,
    help="--debian: Debian's split (conf.d) or non-split configuration [default: as update-exim4.conf.conf says].",
)
@click.option(
    "--confdir",
    default=DEBIAN_CONFDIR,
    show_default=True,
    help="--debian: where the files will be (a non-split configuration names its ACL files by path).",
)
@click.option(
    "--write",
    "write_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="--debian: write the files under this directory (usually the --confdir) instead of printing them.",
)
@click.option(
    "--warn-port",
    type=click.IntRange(1, 65535),
    help="Let quotagate warn's mail through on this port, from 127.0.0.1/::1 only, unchecked ([warn] smtp).",
)
@pass_app
def exim_config(
    app: App,
    method: exim.Method,
    lookup: exim.Lookup | None,
    section: exim.Section | None,
    on_store_error: exim.OnStoreError,
    debian: bool,
    split: bool | None,
    confdir: str,
    write_dir: Path | None,
    warn_port: int | None,
) -> None:
    """Print the Exim router or ACL that refuses over-quota mailboxes at RCPT time."""
    if not debian and (split is not None or write_dir is not None):
        raise click.UsageError("--split, --non-split and --write go with --debian")
    if debian and section is not None:
        raise click.UsageError("--debian writes every section's file: leave out --section")
    try:
        parts = exim.parts(app.config, method, lookup, on_store_error, warn_port)
        if not debian:
            click.echo(exim.render(parts, section), nl=False)
            return
        layout = _layout(split, Path(confdir))
        files = deb.debian_files(parts, method, layout, confdir, on_store_error, exim.full_reply(app.config))
    except (exim.EximConfigError, deb.DebianConfigError) as exc:
        raise click.UsageError(str(exc)) from None
    if write_dir is None:
        click.echo(deb.render_files(files, confdir), nl=False)
        return
    try:
        written = write_files(files, write_dir)
    except deb.DebianConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(files.steps, nl=False)


def _layout(split: bool | None, confdir: Path) -> deb.Layout:
    if split is not None:
        return "split" if split else "non-split"
    try:
        return deb.layout_of((confdir / "update-exim4.conf.conf").read_text(errors="replace"))
    except OSError:
        return "non-split"  # Debian's default


def write_files(files: deb.DebianFiles, root: Path) -> list[Path]:
    """Write each file atomically under ``root``; quotagate's block is merged into an existing
    exim4.conf.localmacros, and the user and password the admin put in a server line are kept.
    Every file is checked before any is written: a refusal (DebianConfigError) leaves them all."""
    planned = []
    for name, text in files.files.items():
        path = root / name
        if name == deb.LOCALMACROS:
            existing = path.read_text() if path.exists() else None  # the admin's: kept byte for byte
            previous = deb.own_block(existing)
        else:
            previous = path.read_text(errors="replace") if path.exists() else ""
        try:
            text, kept = deb.keep_credentials(previous, text)
        except deb.DebianConfigError as exc:
            raise deb.DebianConfigError(f"{path}: {exc}") from None
        if name == deb.LOCALMACROS:
            text = deb.merge_block(existing, text)
        planned.append((path, text, name in files.private, kept))
    for path, text, private, kept in planned:
        write_keeping_owner(path, text, private)
        for lookup in kept:
            click.echo(f"kept the {lookup} server's user and password already in {path}")
    return [path for path, *_ in planned]


def write_keeping_owner(path: Path, text: str, private: bool) -> None:
    """Write ``path`` atomically (:func:`quotagate.publish.write_atomically`). A file that exists
    keeps its mode, owner and group (the admin may keep secrets of their own in it), less what
    others could read when it is ``private`` (will hold a password); a new one is 0644, or
    root:Debian-exim 0640 when ``private``. The temp file gets them before the rename: the path is
    never more readable."""
    try:
        old: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        old = None
    owner: tuple[int, int] | None = None
    if old is None:
        mode = 0o640 if private else 0o644
        gid = _exim_gid(path) if private else -1
        if gid != -1:
            owner = (-1, gid)
    else:
        mode = stat.S_IMODE(old.st_mode) & ~(0o007 if private else 0)
        if os.geteuid() == 0:
            owner = (old.st_uid, old.st_gid)
        elif (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            click.echo(f"warning: cannot give {path} back to uid {old.st_uid}, gid {old.st_gid}", err=True)
    if not write_atomically(path, text, mode, owner) and old is not None and mode != stat.S_IMODE(old.st_mode):
        os.chmod(path, mode)  # the same text, fewer readers


def _exim_gid(path: Path) -> int:
    """Exim's group, or -1 (with a warning) when there is none or we may not give files to it."""
    try:
        gid = grp.getgrnam(EXIM_GROUP).gr_gid
    except KeyError:
        gid = -1
    if gid == -1 or (os.geteuid() != 0 and gid not in os.getgroups()):
        click.echo(f"warning: {path} is not in group {EXIM_GROUP}: give it to the group Exim runs as", err=True)
        return -1
    return gid


def register(cli: click.Group) -> None:
    cli.add_command(exim_config)
