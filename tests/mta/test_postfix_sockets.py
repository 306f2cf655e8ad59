"""postfix-config for a unix socket: under Postfix's queue directory (as the README advises for a
chrooted smtpd, Debian's master.cf runs smtpd chrooted) it is named relative to it; anywhere
else, by its absolute path."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.mta import postfix as postfix_config
from tests.servers.daemon import QUOTAGATE, policy_daemon
from tests.servers.exim import owned_by_mail_user
from tests.servers.postfix import Postfix, private_postfix
from tests.servers.process import free_port
from tests.spoolgen import maildir_folder

pytestmark = [pytest.mark.servers, pytest.mark.mta]
QUOTA = 10_000
BOXES = {"full@example.org": "full", "roomy@example.org": "roomy"}


def rcpt(port: int, to: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail("sender@example.net")[0] == 250
        return client.rcpt(to)[0]


def socket_site(postfix: Postfix, base: Path, socket: Path) -> Path:
    """quotagate's config (the daemon on the unix ``socket``, group postfix) with full@ over its
    limit and roomy@ nearly empty, scanned; returns the config file."""
    config = base / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{base}/q.db"\n[spool]\nroot = "{postfix.maildirs}"\n'
        f'[scan]\nlock_file = "{base}/scan.lock"\n'
        f'[policy]\nlisten = ["unix:{socket}"]\nsocket_group = "postfix"\nmetrics = ""\n'
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
    return config


def use_item(postfix: Postfix, item: str) -> None:
    """The item as postfix-config prints it, put where its comment says, and Postfix reloaded."""
    main_cf = postfix.config_directory / "main.cf"
    before = "smtpd_recipient_restrictions = reject_unauth_destination, permit"
    assert before in main_cf.read_text()
    main_cf.write_text(main_cf.read_text().replace(before, f"{before.removesuffix(', permit')}, {item}, permit"))
    past = time.time() - 60  # Postfix waits for a main.cf less than a second old
    os.utime(main_cf, (past, past))
    os.kill(postfix.master_pid, signal.SIGHUP)
    time.sleep(1)


def test_a_chrooted_smtpd_reaches_the_socket_postfix_config_names(tmp_path: Path) -> None:
    """Scenario: as the README's "Who may ask the daemon" says for a chrooted smtpd, the admin
    sets `listen = ["unix:/var/spool/postfix/private/quotagate"]` (here: the private Postfix's
    queue directory), `socket_group = "postfix"`, and pastes the item `quotagate postfix-config`
    prints into smtpd_recipient_restrictions. Debian's master.cf runs smtpd chrooted (chroot
    column `y`) into the queue directory. A full mailbox is asked for on an unchrooted smtpd
    (control) and on a chrooted one.
    Expected: both answer 552. (postfix-config printed the socket's absolute path, which the
    chrooted smtpd looked up inside its chroot, "No such file or directory": the check fell
    back to DUNNO and the full mailbox was accepted, 250.)"""
    chrooted_port = free_port()
    master = f"127.0.0.1:{chrooted_port} inet n - y - - smtpd\n"  # Debian's chroot column
    with private_postfix("reject_unauth_destination, permit", mailboxes=BOXES, master=master) as postfix:
        queue = postfix.work / "queue"
        config = socket_site(postfix, tmp_path, queue / "private" / "quotagate")
        item = postfix_config.restriction(load_config(config), str(queue))
        use_item(postfix, item)
        with policy_daemon(config, None, ready_log="serving"):
            plain = rcpt(postfix.port, "full@example.org")
            chrooted = rcpt(chrooted_port, "full@example.org")
        assert plain == 552, postfix.log()[-3000:]
        assert chrooted == 552, f"{item}\n{postfix.log()[-3000:]}"


def test_a_socket_in_a_private_directory_outside_the_queue_is_reached() -> None:
    """Scenario: the admin keeps the daemon's socket in a directory of its own that happens to
    be called ``private`` (``listen = ["unix:/srv/quotagate/private/policy"]``; here under a
    temp dir, outside Postfix's queue directory), ``socket_group = "postfix"``, and pastes the
    item ``quotagate postfix-config`` prints into smtpd_recipient_restrictions (smtpd not
    chrooted). A full mailbox is asked for.
    Expected: 552. (postfix-config printed ``unix:private/policy`` for any directory named so,
    which Postfix looked up under its queue directory, found nothing, and with
    default_action=DUNNO accepted: 250, quota enforcement silently off.)"""
    base = Path(tempfile.mkdtemp(prefix="qg-socket-", dir="/var/tmp"))  # postfix must reach it
    base.chmod(0o755)
    try:
        with private_postfix("reject_unauth_destination, permit", mailboxes=BOXES) as postfix:
            (base / "private").mkdir(mode=0o755)
            config = socket_site(postfix, base, base / "private" / "policy")
            item = postfix_config.restriction(load_config(config))
            use_item(postfix, item)
            with policy_daemon(config, None, ready_log="serving"):
                code = rcpt(postfix.port, "full@example.org")
            assert code == 552, f"{item}\n{postfix.log()[-2000:]}"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_postfix_config_asks_postconf_where_the_queue_directory_is(tmp_path: Path) -> None:
    """Scenario: a Postfix whose queue_directory is not Debian's (here the private Postfix's,
    named by MAIL_CONFIG as postconf reads it), the daemon's socket in its private/ directory.
    Expected: `quotagate postfix-config`, with no --queue-directory, names the socket
    `unix:private/quotagate`, as postconf says where the queue is (proven nowhere else: the other
    tests pass the queue directory themselves)."""
    with private_postfix("reject_unauth_destination, permit", mailboxes=BOXES) as postfix:
        socket = postfix.work / "queue" / "private" / "quotagate"
        config = tmp_path / "quotagate.toml"
        config.write_text(f'[policy]\nlisten = ["unix:{socket}"]\nmetrics = ""\n')
        env = {
            **os.environ,
            "PATH": f"{postfix.root}/usr/sbin:{os.environ['PATH']}",
            "MAIL_CONFIG": str(postfix.config_directory),
            "LD_LIBRARY_PATH": f"{postfix.root}/usr/lib/postfix",
        }
        printed = subprocess.run(
            [QUOTAGATE, "--config", str(config), "postfix-config"], env=env, capture_output=True, text=True, timeout=60
        )
    assert printed.returncode == 0, printed.stderr
    assert "check_policy_service { unix:private/quotagate," in printed.stdout, printed.stdout
