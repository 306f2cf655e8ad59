"""The root command group and what every command shares: the config and the store."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from importlib import import_module
from typing import TYPE_CHECKING, TextIO

import click

from quotagate import __version__
from quotagate.text import OneLineFormatter

if TYPE_CHECKING:
    from quotagate.config import Config
    from quotagate.store import Store

_LOG_FORMAT = "quotagate: %(levelname)s: %(message)s"

# command -> the module of quotagate.cli that registers it, imported when the command runs
COMMANDS = {
    "check": "check",
    "db": "db",
    "demo": "demo",
    "exim-config": "exim",
    "mailbox": "mailbox",
    "postfix-config": "postfix",
    "report": "report",
    "reservations": "reservations",
    "scan": "scan",
    "serve": "serve",
    "warn": "warn",
    "watch": "watch",
}


class LazyGroup(click.Group):
    """Commands imported on first use: each module's ``register(cli)`` runs only when its command
    is asked for (or listed by ``--help``), so a command loads only the libraries it uses."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            with collector_paused(freeze=True):
                import_module(f"quotagate.cli.{COMMANDS[cmd_name]}").register(self)
        return super().get_command(ctx, cmd_name)


@contextmanager
def collector_paused(freeze: bool = False) -> Iterator[None]:
    """No cyclic garbage collection meanwhile, and with ``freeze`` what exists after it frozen.

    Importing a command (the config schema's validators, the store) allocates ~100,000 objects
    and no garbage, and every pass of the collector, the one at exit included, walked them
    again (~60 ms of CPU of each cron scan; the scan's worker processes, forked, would copy the
    pages it touches). A scan's readings (a dozen objects per mailbox) are no garbage either,
    until the scan ends. The collector's state is restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()


class App:
    """Loaded lazily, so ``--help`` and ``demo`` never need a config file."""

    def __init__(self, config_file: str | None, quiet: bool = False) -> None:
        self.config_file = config_file
        self.quiet = quiet  # -q: only warnings and errors, so cron mails nothing when all is well

    @cached_property
    def config(self) -> Config:
        from quotagate.config import load_config

        return load_config(self.config_file)

    def store(self) -> Store:
        """The configured store, to use in ``with``; quotagate's own SQLite file is created and
        migrated on first use."""
        from quotagate.store import open_store

        return open_store(self.config.store, migrate=True)


pass_app = click.make_pass_decorator(App)


def _writes_to_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the journal's: systemd sets ``JOURNAL_STREAM=device:inode`` of it.

    Comparing with the stream itself, not just checking the variable, keeps timestamps when a
    command started from a service redirects its stderr elsewhere.
    """
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor behind it (a test's capture, a closed stream)
        return False
    return environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def log_formatter(stream: TextIO, environ: Mapping[str, str]) -> logging.Formatter:
    """One line per record, with a timestamp unless the journal adds its own."""
    journal = _writes_to_journal(stream, environ)
    return OneLineFormatter(_LOG_FORMAT if journal else "%(asctime)s " + _LOG_FORMAT)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    "config_file",
    metavar="FILE",
    envvar="QUOTAGATE_CONFIG",
    help="Config file [default: /etc/quotagate/quotagate.toml, or $QUOTAGATE_CONFIG].",
)
@click.option("--verbose", "-v", count=True, help="More log output: quotagate's debug lines (-vv: its libraries' too).")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors.")
@click.version_option(__version__, prog_name="quotagate", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: int, quiet: bool) -> None:
    """Refuse mail for full mailboxes during the SMTP transaction."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(sys.stderr, os.environ))
    logging.basicConfig(level=level, handlers=[handler])
    if verbose == 1 and not quiet:  # the libraries' debug lines (SQLAlchemy, ldap3, asyncio) drown ours
        logging.getLogger("quotagate").setLevel(logging.DEBUG)
    ctx.obj = App(config_file, quiet)
