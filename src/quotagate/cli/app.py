"""The root command group and what every command shares: the config and the store."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from functools import cached_property
from typing import TextIO

import click

from quotagate.config import Config, load_config
from quotagate.store import Store, open_store
from quotagate.text import OneLineFormatter

_LOG_FORMAT = "quotagate: %(levelname)s: %(message)s"


class App:
    """Loaded lazily, so ``--help`` and ``demo`` never need a config file."""

    def __init__(self, config_file: str | None, quiet: bool = False) -> None:
        self.config_file = config_file
        self.quiet = quiet  # -q: only warnings and errors, so cron mails nothing when all is well

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_file)

    def store(self) -> Store:
        """The configured store, to use in ``with``; quotagate's own SQLite file is created and
        migrated on first use."""
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    "config_file",
    metavar="FILE",
    envvar="QUOTAGATE_CONFIG",
    help="Config file [default: /etc/quotagate/quotagate.toml, or $QUOTAGATE_CONFIG].",
)
@click.option("--verbose", "-v", count=True, help="More log output (-vv for debug).")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="quotagate", prog_name="quotagate", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: int, quiet: bool) -> None:
    """Refuse mail for full mailboxes during the SMTP transaction."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(sys.stderr, os.environ))
    logging.basicConfig(level=level, handlers=[handler])
    ctx.obj = App(config_file, quiet)
