"""``quotagate serve``: the live policy daemon for Exim and Postfix."""

from __future__ import annotations

import click

from quotagate.cli.app import App, pass_app
from quotagate.config import load_config
from quotagate.policy.daemon import serve as run_daemon
from quotagate.store import store_for


@click.command("serve")
@pass_app
def serve(app: App) -> None:
    """Answer policy requests (Postfix check_policy_service, Exim readsocket) until SIGTERM.

    SIGHUP reloads the config. Listens on [policy] listen; metrics on [policy] metrics.
    """
    # A bad config, or a store URL that can never work (unknown scheme or driver, driver not
    # installed), fails here, before anything listens; an unreachable store is an outage: DUNNO.
    store_for(app.config.store).close()
    run_daemon(lambda: load_config(app.config_file))


def register(cli: click.Group) -> None:
    cli.add_command(serve)
