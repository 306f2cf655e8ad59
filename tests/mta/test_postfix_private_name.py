"""postfix-config names a socket relative to Postfix's queue directory only when it is in it."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import tempfile
import time
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.mta import postfix as postfix_config
from tests.servers.daemon import policy_daemon
from tests.servers.exim import owned_by_mail_user
from tests.servers.postfix import private_postfix
from tests.spoolgen import maildir_folder

pytestmark = [pytest.mark.servers, pytest.mark.mta]
QUOTA = 10_000


def test_a_socket_in_a_private_directory_outside_the_queue_is_reached() -> None:
    """Scenario: the admin keeps the daemon's socket in a directory of its own that happens to
    be called ``private`` (``listen = ["unix:/srv/quotagate/private/policy"]``; here under a
    temp dir, outside Postfix's queue directory), ``socket_group = "postfix"``, and pastes the
    item ``quotagate postfix-config`` prints into smtpd_recipient_restrictions (smtpd not
    chrooted). A full mailbox is asked for.
    Expected: 552. (postfix-config printed ``unix:private/policy`` for any directory named so,
    which Postfix looked up under its queue directory, found nothing, and with
    default_action=DUNNO accepted: 250, quota enforcement silently off.)"""
    base = Path(tempfile.mkdtemp(prefix="qg-review-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        boxes = {"full@example.org": "full", "roomy@example.org": "roomy"}
        with private_postfix("reject_unauth_destination, permit", mailboxes=boxes) as postfix:
            (base / "private").mkdir(mode=0o755)
            config = base / "quotagate.toml"
            config.write_text(
                f'[store]\nurl = "sqlite:///{base}/q.db"\n[spool]\nroot = "{postfix.maildirs}"\n'
                f'[scan]\nlock_file = "{base}/scan.lock"\n'
                f'[policy]\nlisten = ["unix:{base}/private/policy"]\nsocket_group = "postfix"\nmetrics = ""\n'
                f'control_socket = "{base}/control.sock"\n'
            )
            for address, size in (("full@example.org", QUOTA + 1), ("roomy@example.org", 10)):
                maildir = postfix.maildir(address)
                maildir_folder(maildir)
                (maildir / "cur" / f"1.M1.h,S={size}:2,S").write_bytes(b"x" * size)
                add = ["mailbox", "add", address, "--quota", str(QUOTA), "--path", str(maildir)]
                assert main(["--config", str(config), *add]) == 0
            owned_by_mail_user(postfix.maildirs)
            assert main(["--config", str(config), "scan"]) == 0

            item = postfix_config.restriction(load_config(config))
            main_cf = postfix.config_directory / "main.cf"
            before = "smtpd_recipient_restrictions = reject_unauth_destination, permit"
            after = f"smtpd_recipient_restrictions = reject_unauth_destination, {item}, permit"
            main_cf.write_text(main_cf.read_text().replace(before, after))
            past = time.time() - 60
            os.utime(main_cf, (past, past))
            os.kill(postfix.master_pid, signal.SIGHUP)
            time.sleep(1)

            with (
                policy_daemon(config, None, ready_log="serving"),
                smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client,
            ):
                client.ehlo("client.test")
                assert client.mail("sender@example.net")[0] == 250
                code = client.rcpt("full@example.org")[0]
            assert code == 552, f"{item}\n{postfix.log()[-2000:]}"
    finally:
        shutil.rmtree(base, ignore_errors=True)
