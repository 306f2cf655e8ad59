"""``quotagate serve``: the live policy daemon for Exim and Postfix."""

from __future__ import annotations

import logging
import sys

import click

from quotagate.cli.app import App, pass_app
from quotagate.config import Config, load_config
from quotagate.policy.daemon import serve as run_daemon


def _password_file_readable(config: Config) -> None:
    """An LDAP store's password file missing or unreadable is a config mistake, said at start
    as scan says it: the store reads it only when it binds, and serve would answer DUNNO for
    ever, as for a store that is down."""
    if config.store.url.startswith(("ldap:", "ldaps:", "ldapi:")):
        from quotagate.store.ldap import bind_password  # ldap3: only for an LDAP store

        bind_password(config.store.ldap)


def _worker_command(app: App) -> list[str]:
    """How the supervisor starts a worker: this same command, with the same config and verbosity."""
    command = [sys.executable, "-m", "quotagate"]
    if app.config_file:
        command += ["--config", app.config_file]
    level, ours = logging.getLogger().level, logging.getLogger("quotagate").getEffectiveLevel()
    if level >= logging.WARNING:
        command.append("-q")
    elif level <= logging.DEBUG:
        command.append("-vv")
    elif ours <= logging.DEBUG:
        command.append("-v")  # quotagate's debug lines only (see the cli group)
    return [*command, "serve"]


@click.command("serve")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Processes answering on the same sockets [default: [policy] workers, 1]; more than one needs [shared] url.",
)
@click.option("--worker", "worker_spec", hidden=True, help="Set by the supervisor of --workers: this worker's role.")
@pass_app
def serve(app: App, workers: int | None, worker_spec: str | None) -> None:
    """Answer policy requests (Postfix check_policy_service, Exim readsocket) until SIGTERM.

    SIGHUP reloads the config. Listens on [policy] listen; metrics on [policy] metrics. With
    --workers N, N processes answer on the same sockets and share reservations through [shared].
    """
    # A bad config, or a store URL that can never work (unknown scheme or driver, driver not
    # installed), fails here, before anything listens; an unreachable store is an outage: DUNNO.
    # quotagate's own SQLite file is migrated here, as by every other command: an upgrade's
    # restart would otherwise serve a store "not set up" (DUNNO for all) until the next scan.
    app.store().close()
    _password_file_readable(app.config)
    count = workers or app.config.policy.workers
    if worker_spec is not None:
        from quotagate.policy.workers import worker_role

        run_daemon(lambda: load_config(app.config_file), worker_role(worker_spec))
    elif count > 1:
        from quotagate.policy.workers import Supervisor

        Supervisor(app.config, count, _worker_command(app)).run()
    else:
        run_daemon(lambda: load_config(app.config_file))


def register(cli: click.Group) -> None:
    cli.add_command(serve)
