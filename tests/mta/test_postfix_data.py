"""Mail without SIZE= through a real Postfix: check_policy_service in
smtpd_end_of_data_restrictions (as postfix-config prints it) refuses at END-OF-MESSAGE, with the
message's real size, what the RCPT check could not judge. And a folder with a limit of its own
(``roomy+Archive@``): a burst lets in only what fits the folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import smtplib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.mta import postfix as postfix_config
from tests.servers.daemon import PolicyDaemon, policy_daemon
from tests.servers.exim import owned_by_mail_user
from tests.servers.postfix import Postfix, private_postfix
from tests.servers.process import free_port
from tests.servers.smtp_clients import at_once, body, mail_sessions
from tests.spoolgen import maildir_folder

ROOMY = "roomy@example.org"
QUOTA, SIZE, CLIENTS = 450_000, 100_000, 10  # room for four (and a half) messages
BODY = b"Subject: without size\r\n\r\n" + (b"x" * 998 + b"\r\n") * (SIZE // 1000)


@dataclass
class Setup:
    postfix: Postfix
    daemon: PolicyDaemon

    def maildir(self) -> Path:
        return self.postfix.maildir(ROOMY)


@contextlib.contextmanager
def postfix_site(tmp_path: Path, archive_quota: int = 0, others: tuple[str, ...] = ()) -> Iterator[Setup]:
    """roomy@ (room for four and a half messages) behind a private Postfix with postfix-config's
    items, and the daemon. With ``archive_quota``: roomy@ has plenty and its folder Archive that
    limit of its own; ``recipient_delimiter = +`` and a map entry of its own deliver
    ``roomy+archive@`` into ``.Archive`` (virtual(8)). ``others``: addresses Postfix delivers
    too, mailboxes quotagate does not know."""
    port = free_port()
    config = tmp_path / "quotagate.toml"
    listen = f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\ncontrol_socket = "{tmp_path}/control.sock"\n'
    config.write_text(listen)
    item = postfix_config.restriction(load_config(config))
    extra, rule, maps_dir = f"smtpd_end_of_data_restrictions = {item}\n", "", None
    if archive_quota:
        maps_dir = Path(tempfile.mkdtemp(prefix="quotagate-postfix-maps-", dir="/var/tmp"))  # Postfix's to read
        maps_dir.chmod(0o755)
        maps = maps_dir / "vmailbox"
        maps.write_text(f"{ROOMY} roomy/Maildir/\nroomy+archive@example.org roomy/Maildir/.Archive/\n")
        maps.chmod(0o644)
        past = time.time() - 60  # older than Postfix's daemons: not a changed table to restart for
        os.utime(maps, (past, past))
        extra += f"recipient_delimiter = +\nvirtual_mailbox_maps = texthash:{maps}\n"
        rule = f'[[folders]]\nmatch = "Archive"\nquota = "{archive_quota}"\n'
    try:
        with private_postfix(
            f"reject_unauth_destination, {item}, permit",
            mailboxes={ROOMY: "roomy", **{other: other.partition("@")[0] for other in others}},
            main=extra,
        ) as postfix:
            maildir = postfix.maildir(ROOMY)
            maildir_folder(maildir)
            if archive_quota:
                maildir_folder(maildir, "Archive")
            config.write_text(
                f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{postfix.maildirs}"\n'
                f'[scan]\nlock_file = "{tmp_path}/scan.lock"\n{rule}{listen}'
            )
            quota = 100 * QUOTA if archive_quota else QUOTA
            add = ["mailbox", "add", ROOMY, "--quota", str(quota), "--path", str(maildir)]
            assert main(["--config", str(config), *add]) == 0
            owned_by_mail_user(postfix.maildirs)
            assert main(["--config", str(config), "scan"]) == 0
            with policy_daemon(config, port) as daemon:
                yield Setup(postfix, daemon)
    finally:
        if maps_dir is not None:
            shutil.rmtree(maps_dir, ignore_errors=True)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with postfix_site(tmp_path) as site:
        yield site


def wait_for_count(postfix: Postfix, count: int, seconds: float = 20, folder: str = "") -> list[Path]:
    """The messages in the mailbox (or its ``folder``) once ``count`` landed (they land one by
    one), or after ``seconds``."""
    deadline = time.monotonic() + seconds
    new = postfix.maildir(ROOMY) / folder / "new"
    while len(found := sorted(new.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_ten_messages_without_size_at_once_let_in_only_the_four_that_fit(setup: Setup) -> None:
    postfix = setup.postfix
    sessions = mail_sessions(postfix.port, CLIENTS, 30)  # no SIZE=
    for smtp in sessions:
        assert smtp.rcpt(ROOMY)[0] == 250  # nothing to judge the message by yet

    codes = at_once(CLIENTS, lambda n: sessions[n].data(BODY)[0], timeout=120)
    for smtp in sessions:
        smtp.quit()
    # The six wait for the room of the four in flight: deferred, refused once those have landed.
    assert sorted(codes) == [250] * 4 + [452] * 6, postfix.log()[-3000:]
    delivered = wait_for_count(postfix, 4)
    assert len(delivered) == 4
    assert sum(f.stat().st_size for f in delivered) <= QUOTA
    assert "at DATA" in setup.daemon.log()


def test_a_single_recipient_message_without_size_that_does_not_fit_is_refused_at_end_of_message(
    setup: Setup,
) -> None:
    postfix = setup.postfix
    big = b"Subject: too big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (QUOTA // 1000)
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as client:
        client.ehlo("client.test")
        assert client.mail("sender@example.net")[0] == 250
        assert client.rcpt(ROOMY)[0] == 250
        code, text = client.data(big)
    # Postfix words it: "5.2.2 <END-OF-MESSAGE>: End-of-data rejected: Message of N bytes does
    # not fit in this mailbox".
    assert code == 552 and text.decode().endswith("does not fit in this mailbox"), postfix.log()[-3000:]
    assert postfix.logged("reject: END-OF-MESSAGE")
    assert postfix.queue_count() == 0
    assert postfix.smtp(ROOMY, body=BODY) == 250  # one that fits still does
    assert len(wait_for_count(postfix, 1)) == 1


def test_postfix_a_recipient_given_twice_does_not_escape_the_end_of_message_check(setup: Setup) -> None:
    """RCPT TO the same mailbox twice: Postfix's recipient_count is 2, the daemon remembers one
    recipient: counting addresses, it once took the message for one with a recipient it never
    checked, and accepted it."""
    code, text = _too_big(setup, [(ROOMY, 250), (ROOMY, 250)])
    assert code == 552 and text.decode().endswith("does not fit in this mailbox"), setup.daemon.log()[-2000:]
    assert setup.postfix.queue_count() == 0
    assert wait_for_count(setup.postfix, 1, seconds=3) == []


def _too_big(setup: Setup, rcpts: list[tuple[str, int]]) -> tuple[int, bytes]:
    """A message without SIZE= that fits no mailbox here, to ``rcpts`` (each with the reply
    Postfix gives it): the reply to its end of data."""
    big = b"Subject: too big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (QUOTA // 1000)
    with smtplib.SMTP("127.0.0.1", setup.postfix.port, timeout=60) as client:
        client.ehlo("client.test")
        assert client.mail("sender@example.net")[0] == 250  # no SIZE=
        assert [client.rcpt(rcpt)[0] for rcpt, _ in rcpts] == [reply for _, reply in rcpts]
        return client.data(big)


def test_postfix_a_bogus_recipient_does_not_get_a_message_that_fits_no_real_one_past_the_check(setup: Setup) -> None:
    """nosuchuser@ is no mailbox: the daemon answers DUNNO, then Postfix refuses it (550, its
    smtpd_reject_unlisted_recipient) without the daemon hearing of it. Counted as let in, it once
    stood for a recipient "not refused", and the message that fits no real recipient got in."""
    # ROOMY twice: recipient_count 2, and 2 RCPTs let in with room; nosuchuser@ 550 after DUNNO.
    code, text = _too_big(setup, [(ROOMY, 250), (ROOMY, 250), ("nosuchuser@example.org", 550)])
    assert code == 552 and text.decode().endswith("does not fit in this mailbox"), setup.daemon.log()[-2000:]
    assert setup.postfix.queue_count() == 0


def test_a_burst_to_a_folder_lets_in_only_the_messages_that_fit_the_folder(tmp_path: Path) -> None:
    """Ten clients at once, each ``SIZE=100000`` to ``roomy+Archive@``: the folder has room for
    4.5 of them, the mailbox for a hundred. 4 accepted, 6 deferred (452) at RCPT, and 4 land in
    ``.Archive``."""
    with postfix_site(tmp_path, archive_quota=QUOTA) as setup:
        postfix = setup.postfix
        sessions = mail_sessions(postfix.port, CLIENTS, 20, SIZE)
        codes = at_once(CLIENTS, lambda n: sessions[n].rcpt("roomy+Archive@example.org")[0])
        for smtp, code in zip(sessions, codes, strict=True):
            if code == 250:
                assert smtp.data(BODY)[0] == 250
            smtp.quit()
        assert sorted(codes) == [250] * 4 + [452] * 6, postfix.log()[-3000:]
        assert len(wait_for_count(postfix, 4, folder=".Archive")) == 4, postfix.log()[-2500:]


def test_a_copy_deferred_at_end_of_message_keeps_its_room_when_the_message_is_accepted(tmp_path: Path) -> None:
    """Scenario: no [watch] (most sites see no delivery). Three clients declare SIZE=100000 and
    are let in for roomy@ (300 kB held of its 450 kB). A fourth, without SIZE=, sends one 200 kB
    message to roomy@ and other@ (a mailbox quotagate does not know). At END-OF-MESSAGE roomy@
    is deferred (it fits alone, not beside the room held), other@ is not: Postfix has one answer
    for the message, accepts it and delivers it to both. Then the three send their DATA.
    Expected: roomy@'s copy holds its room in flight, so the three later messages do not all
    fit: roomy@ never ends over its limit. Its room was let go, all three were accepted, and
    roomy@ ended at ~500 kB of 450 kB."""
    other = "other@example.org"
    with postfix_site(tmp_path, others=(other,)) as setup:
        postfix = setup.postfix
        holders = mail_sessions(postfix.port, 3, 30, SIZE)
        assert [smtp.rcpt(ROOMY)[0] for smtp in holders] == [250] * 3
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as late:
            late.ehlo("client.test")
            assert late.mail("sender@example.net")[0] == 250  # no SIZE=
            assert late.rcpt(ROOMY)[0] == 250 and late.rcpt(other)[0] == 250
            assert late.data(body(2 * SIZE))[0] == 250
        codes = [smtp.data(BODY)[0] for smtp in holders]
        for smtp in holders:
            smtp.quit()
        delivered = wait_for_count(postfix, 1 + codes.count(250))
        assert len(delivered) == 1 + codes.count(250), (codes, postfix.log()[-3000:])
        assert sum(f.stat().st_size for f in delivered) <= QUOTA, codes
