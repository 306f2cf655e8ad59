"""The root command group and what every command shares: the config and the store."""

from __future__ import annotations

import logging
from functools import cached_property

import click

from quotagate import __version__
from quotagate.config import Config, load_config
from quotagate.store import Store, store_for


class App:
    """Loaded lazily, so ``--help`` and ``demo`` never need a config file."""

    def __init__(self, config_file: str | None) -> None:
        self.config_file = config_file

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_file)

    def store(self) -> Store:
        """The configured store; quotagate's own SQLite file is created and migrated on first use."""
        store = store_for(self.config.store)
        if self.config.store.url.startswith("sqlite") and self.config.store.schema_ == "quotagate":
            store.migrate()
        return store


pass_app = click.make_pass_decorator(App)


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
@click.version_option(__version__, prog_name="quotagate")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: int, quiet: bool) -> None:
    """Refuse mail for full mailboxes during the SMTP transaction."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="quotagate: %(levelname)s: %(message)s")
    ctx.obj = App(config_file)
