"""The live check against real Exim: the generated ACL (or router) asks ``quotagate serve`` at RCPT
with the declared SIZE=, and the answer holds room for mail in flight."""

from __future__ import annotations

import grp
import smtplib
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, QUOTA, Site
from tests.servers.daemon import PolicyDaemon, policy_daemon
from tests.servers.exim import Exim, owned_by_mail_user
from tests.servers.process import free_port

ALIAS_ROUTER = """\
aliases:
  driver = redirect
  domains = +local_domains
  data = ${{lookup{{${{lc:$local_part@$domain}}}}lsearch{{{aliases}}}}}
"""
# Exim's own quota, which must still guard delivery when the daemon is down.
TRANSPORT_QUOTA = f"quota = {QUOTA}\nquota_is_inclusive = false\nmaildir_use_size_file\n"


def site_for(work: Path, reservation_seconds: int = 600, unix: bool = False) -> tuple[Site, int]:
    """The site, and the daemon's port (``unix``: it listens on ``work/policy.sock`` instead,
    for Exim's group only, as the README advises for an MTA on the same host)."""
    spool = work / "mail"
    spool.mkdir(exist_ok=True)
    port = free_port()
    config = work / "quotagate.toml"
    listen = (
        f'listen = ["unix:{work}/policy.sock"]\nsocket_mode = "0660"\nsocket_group = "Debian-exim"\n'
        if unix
        else f'listen = ["127.0.0.1:{port}"]\n'
    )
    config.write_text(
        f'[store]\nurl = "sqlite:///{work}/db/q.db"\n[spool]\nroot = "{spool}"\n'
        f'[policy]\n{listen}metrics = ""\nrefresh_seconds = 1\n'
        f"reservation_seconds = {reservation_seconds}\n"
    )
    (work / "db").mkdir(exist_ok=True)
    return Site(work, spool, config), port


def prepare(
    work: Path, exim: Exim, section: str, reservation_seconds: int = 600, rcpt_acl: str = "", unix: bool = False
) -> tuple[Site, int]:
    site, port = site_for(work, reservation_seconds, unix)
    site.full_and_roomy()
    parts = exim_config.parts(load_config(site.config), "policy")
    (work / "aliases").write_text(f"alias@{DOMAIN}: full@{DOMAIN}\n")
    routers = ALIAS_ROUTER.format(aliases=work / "aliases") + (parts.routers if section == "routers" else "")
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{u}" for u in ("full", "roomy")}
    exim.configure(
        users=users,
        main=parts.main,
        acls=parts.acls,
        acl=rcpt_acl,
        verified_acl=parts.acl if section == "acl" else "",
        routers=routers,
        transport=TRANSPORT_QUOTA,
    )
    return site, port


@pytest.fixture
def daemon_acl(work: Path, exim: Exim) -> Iterator[tuple[Site, PolicyDaemon]]:
    site, port = prepare(work, exim, "acl")
    with policy_daemon(site.config, port) as daemon:
        exim.start()
        yield site, daemon


def test_twenty_messages_to_a_full_mailbox_are_refused_at_rcpt(
    daemon_acl: tuple[Site, PolicyDaemon], exim: Exim
) -> None:
    codes = [exim.smtp(f"full@{DOMAIN}") for _ in range(20)]
    assert codes == [552] * 20, exim.log("main")
    assert exim.queue_count() == 0
    assert not [line for line in exim.log("main").splitlines() if " <= " in line]


def test_declared_size_is_checked_inclusively_and_room_is_held(
    daemon_acl: tuple[Site, PolicyDaemon], exim: Exim
) -> None:
    site, _ = daemon_acl
    assert exim.smtp(f"roomy@{DOMAIN}", size=QUOTA) == 552  # 10 bytes used: QUOTA more does not fit
    body = b"Subject: fits\r\n\r\n" + b"x" * 6000 + b"\r\n"
    assert exim.smtp(f"roomy@{DOMAIN}", body=body, size=len(body)) == 250
    # The first message holds its room: a second one of the same size no longer fits, for now
    # (a temporary refusal: only room held for a message in progress stands in the way).
    assert exim.smtp(f"roomy@{DOMAIN}", body=body, size=len(body)) == 452
    assert exim.smtp(f"roomy@{DOMAIN}", size=100) == 250
    assert len(list((site.maildir("roomy") / "new").iterdir())) == 2


def test_maildirsize_makes_the_next_check_see_a_delivery_at_once(work: Path, exim: Exim) -> None:
    # No reservations: only the maildirsize Exim updates on delivery can explain the refusal.
    site, port = prepare(work, exim, "acl", reservation_seconds=0)
    roomy = site.maildir("roomy")
    (roomy / "maildirsize").write_text(f"{QUOTA}S\n10 1\n")
    owned_by_mail_user(site.spool)  # Exim delivers as the mail user and appends to it
    assert site.quotagate("scan", "--full") == 0
    with policy_daemon(site.config, port):
        exim.start()
        body = b"Subject: fits\r\n\r\n" + b"x" * 6000 + b"\r\n"
        assert exim.smtp(f"roomy@{DOMAIN}", body=body, size=len(body)) == 250
        assert exim.smtp(f"roomy@{DOMAIN}", body=body, size=len(body)) == 552, (roomy / "maildirsize").read_text()


def test_exim_asks_on_the_unix_socket_which_only_its_group_may_use(work: Path, exim: Exim) -> None:
    """The README's advice for an MTA on the same host: exim-config's readsocket names the
    daemon's unix socket (no kernel lookup per connection), whose mode lets Exim in."""
    site, _ = prepare(work, exim, "acl", unix=True)
    with policy_daemon(site.config, None, ready_log="listening on unix:"):
        socket = work / "policy.sock"
        st = socket.stat()
        assert (stat.S_IMODE(st.st_mode), grp.getgrgid(st.st_gid).gr_name) == (0o660, "Debian-exim")
        assert f"readsocket{{{socket}}}" in exim.config.read_text()
        exim.start()
        assert exim.smtp(f"full@{DOMAIN}") == 552
        assert exim.smtp(f"roomy@{DOMAIN}", size=QUOTA) == 552  # a declared size: inclusive
        assert exim.smtp(f"roomy@{DOMAIN}") == 250
    assert "cannot ask" not in exim.log("main")


def test_with_the_daemon_down_mail_is_accepted_and_exims_quota_guards_delivery(work: Path, exim: Exim) -> None:
    site, port = prepare(work, exim, "acl")
    with policy_daemon(site.config, port) as daemon:
        exim.start()
        assert exim.smtp(f"full@{DOMAIN}") == 552
        assert daemon.stop() == 0
        assert exim.smtp(f"roomy@{DOMAIN}") == 250  # accepted as if quotagate were not there
        assert exim.smtp(f"full@{DOMAIN}") == 250
    assert exim.queue_count() == 1  # the message for the full mailbox waits: nothing lost
    assert "quota exceeded" in exim.log("main").lower()


def test_an_alias_to_a_full_mailbox_is_refused_by_the_router_variant(work: Path, exim: Exim) -> None:
    site, port = prepare(work, exim, "routers")
    with policy_daemon(site.config, port):
        exim.start()
        assert exim.smtp(f"alias@{DOMAIN}") // 100 == 5
        assert exim.smtp(f"roomy@{DOMAIN}") == 250
        (reply,) = exim.fake_session(f"alias@{DOMAIN}")
        assert reply.startswith("552 5.2.2") and "Mailbox is full" in reply, reply
    assert exim.queue_count() == 0


def test_the_router_variant_defers_what_held_room_stands_in_the_way_of_and_never_checks_senders(
    work: Path, exim: Exim
) -> None:
    """A 4xx answer from the daemon stays a 4xx (the router used to fail every answer with 552),
    and a full mailbox's owner can still send: the router does not run for sender verification."""
    site, port = prepare(work, exim, "routers", rcpt_acl="require verify = sender\n")
    with policy_daemon(site.config, port):
        exim.start()
        with smtplib.SMTP("127.0.0.1", exim.port, timeout=30) as first:
            first.ehlo("first.test")
            assert first.mail(f"roomy@{DOMAIN}", ["SIZE=6000"])[0] == 250
            assert first.rcpt(f"roomy@{DOMAIN}")[0] == 250  # holds 6,000 of roomy's room
            with smtplib.SMTP("127.0.0.1", exim.port, timeout=30) as second:
                second.ehlo("second.test")
                assert second.mail(f"full@{DOMAIN}", ["SIZE=6000"])[0] == 250
                code, reply = second.rcpt(f"roomy@{DOMAIN}")
                assert code == 452, reply  # held room: later, not never
                assert second.rcpt(f"alias@{DOMAIN}")[0] == 552  # the mailbox itself is full
                code, reply = second.rcpt(f"roomy@{DOMAIN}")
                assert b"Too many messages in progress" in reply
