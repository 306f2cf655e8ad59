"""``quotagate postfix-config``: the check_policy_service settings for Postfix."""

from __future__ import annotations

import shutil
import subprocess

import click

from quotagate.cli.app import App, pass_app
from quotagate.mta import postfix


@click.command("postfix-config")
@click.option(
    "--warn-port",
    type=click.IntRange(1, 65535),
    help="Also print a master.cf smtpd on 127.0.0.1:PORT without the check, for [warn] smtp.",
)
@click.option(
    "--queue-directory",
    help="Postfix's queue_directory, under which a socket is named relative to it "
    "[default: postconf's, else /var/spool/postfix].",
)
@pass_app
def postfix_config(app: App, warn_port: int | None, queue_directory: str | None) -> None:
    """Print the main.cf settings that make Postfix ask quotagate serve at RCPT time."""
    try:
        click.echo(postfix.main_cf(app.config, queue_directory or _queue_directory()), nl=False)
        if warn_port is not None:
            click.echo(postfix.warn_service(warn_port), nl=False)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _queue_directory() -> str:
    """What this host's Postfix says its queue_directory is (postconf honours $MAIL_CONFIG), or
    the default when there is no Postfix to ask."""
    postconf = shutil.which("postconf") or shutil.which("postconf", path="/usr/sbin:/sbin")
    if postconf is None:
        return postfix.QUEUE_DIRECTORY
    try:
        found = subprocess.run([postconf, "-h", "queue_directory"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return postfix.QUEUE_DIRECTORY
    return found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else postfix.QUEUE_DIRECTORY


def register(cli: click.Group) -> None:
    cli.add_command(postfix_config)
