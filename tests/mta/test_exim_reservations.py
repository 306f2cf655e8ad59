"""Reservations through real Exim with the generated configuration: a burst of messages from many
clients lets in exactly the ones that fit, a prober that never sends DATA leaves nothing held, and
a daemon restarted, or a scan run, between the RCPTs and the DATA of a burst still holds their room.
The others are deferred (452), not refused: only room held for messages in progress stands in
their way. The same for a folder with a limit of its own (``roomy+Archive@``), which Exim's ACLs
see in lower case (``roomy+archive``) while its router delivers into ``.Archive`` as sent."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable
from pathlib import Path

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from quotagate.policy.control import ask as ask_control
from tests.mta.conftest import DOMAIN, Site
from tests.servers.daemon import policy_daemon
from tests.servers.exim import Exim, owned_by_mail_user
from tests.servers.process import free_port
from tests.servers.smtp_clients import at_once, body
from tests.spoolgen import maildir_folder

MESSAGE = 100_000
QUOTA = 450_000  # room for 4.5 of them
BURST = 10
ROOMY = f"roomy@{DOMAIN}"
OTHER = f"other@{DOMAIN}"
ARCHIVE = f"roomy+Archive@{DOMAIN}"


def prepare(work: Path, exim: Exim, archive_quota: int = 0, watch: bool = True) -> tuple[Site, int]:
    """roomy@ with room for 4.5 messages, and other@, a mailbox quotagate does not know; with
    ``archive_quota``, roomy@ has plenty and its folder Archive that limit of its own, and a
    router delivers ``roomy+Archive@`` into it; ``watch``: deliveries seen (most sites see none)."""
    spool = work / "mail"
    spool.mkdir()
    (work / "db").mkdir()
    port = free_port()
    config = work / "quotagate.toml"
    rule = f'[[folders]]\nmatch = "Archive"\nquota = "{archive_quota}"\n' if archive_quota else ""
    config.write_text(
        f'[store]\nurl = "sqlite:///{work}/db/q.db"\n[spool]\nroot = "{spool}"\n'
        f'[scan]\nlock_file = "{work}/scan.lock"\n'
        f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\ncontrol_socket = "{work}/control.sock"\n'
        + ("[watch]\nenabled = true\nflush_seconds = 0.1\n" if watch else "")
        + rule
    )
    site = Site(work, spool, config)
    quota = 100 * QUOTA if archive_quota else QUOTA
    assert site.quotagate("mailbox", "add", ROOMY, "--quota", str(quota)) == 0
    if archive_quota:
        maildir_folder(site.maildir("roomy"), "Archive")
    site.fill("roomy", 10)
    assert site.quotagate("scan") == 0
    parts = exim_config.parts(load_config(config), "policy")
    routers = transports = ""
    if archive_quota:
        # roomy+Archive@ delivered into the Maildir++ folder .Archive, as an admin's router with
        # local_part_suffix does (Exim matches the suffix on the local part it lowered).
        routers, transports = exim.folder_router("+archive"), exim.folder_transport(".Archive")
    exim.configure(
        users={ROOMY: f"{DOMAIN}/roomy", OTHER: f"{DOMAIN}/other"},
        main=parts.main,
        acls=parts.acls,
        verified_acl=parts.acl,
        routers=routers,
        transports=transports,
    )
    return site, port


class Client:
    """One SMTP client from its own loopback address: a client of its own for the daemon."""

    def __init__(self, exim: Exim, n: int) -> None:
        self.smtp = smtplib.SMTP(timeout=60, source_address=(f"127.0.0.{10 + n}", 0))
        self.smtp.connect("127.0.0.1", exim.port)
        self.smtp.ehlo("client.test")

    def rcpt(self, size: int, recipient: str = ROOMY) -> int:
        assert self.smtp.mail("sender@example.net", [f"SIZE={size}"])[0] == 250
        return self.smtp.rcpt(recipient)[0]

    def data(self, size: int) -> int:
        return self.smtp.data(body(size))[0]

    def quit(self) -> None:
        self.smtp.quit()


def burst(exim: Exim, between: Callable[[], None] = lambda: None, recipient: str = ROOMY) -> list[int]:
    """Ten clients at once: every RCPT first, then (after ``between``) DATA from those let in."""
    clients = [Client(exim, n) for n in range(BURST)]
    codes = at_once(BURST, lambda n: clients[n].rcpt(MESSAGE, recipient))
    between()
    for client, code in zip(clients, codes, strict=True):
        if code == 250:
            assert client.data(MESSAGE) == 250
        client.quit()
    return codes


def delivered(site: Site, folder: str = "") -> list[int]:
    new = site.maildir("roomy") / folder / "new"
    return sorted(f.stat().st_size for f in new.iterdir()) if new.exists() else []


def test_a_burst_from_many_clients_lets_in_exactly_the_messages_that_fit(work: Path, exim: Exim) -> None:
    site, port = prepare(work, exim)
    with policy_daemon(site.config, port):
        exim.start()
        codes = burst(exim)
        assert sorted(codes) == [250] * 4 + [452] * 6, exim.log("main")
        assert len(delivered(site)) == 4
        assert sum(delivered(site)) + 10 <= QUOTA
        assert exim.queue_count() == 0


def test_a_daemon_restarted_between_rcpt_and_data_still_holds_the_room(work: Path, exim: Exim) -> None:
    site, port = prepare(work, exim)
    with policy_daemon(site.config, port) as daemon:
        exim.start()

        def restart_and_probe() -> None:
            daemon.stop()
            daemon.start()
            # The four accepted are restored: a fifth client finds no room.
            late = Client(exim, 40)
            assert late.rcpt(MESSAGE) == 452
            late.quit()

        codes = burst(exim, between=restart_and_probe)
        assert sorted(codes) == [250] * 4 + [452] * 6
        assert len(delivered(site)) == 4
        assert "4 reservations restored" in daemon.log()


def test_a_scan_between_rcpt_and_data_keeps_the_room_held(work: Path, exim: Exim) -> None:
    """A fresher measurement (a full scan, then the daemon reloading on SIGHUP) includes none of
    the four messages in flight, so it must release none of their room."""
    site, port = prepare(work, exim)
    with policy_daemon(site.config, port) as daemon:
        exim.start()

        def scan_and_probe() -> None:
            assert site.quotagate("scan", "--full") == 0
            daemon.reload()
            late = Client(exim, 41)
            assert late.rcpt(MESSAGE) == 452
            late.quit()

        codes = burst(exim, between=scan_and_probe)
        assert sorted(codes) == [250] * 4 + [452] * 6
        assert len(delivered(site)) == 4
        assert sum(delivered(site)) + 10 <= QUOTA


def test_a_prober_that_never_sends_data_leaves_nothing_held(work: Path, exim: Exim) -> None:
    site, port = prepare(work, exim)
    control = work / "control.sock"
    with policy_daemon(site.config, port):
        exim.start()
        prober, size = Client(exim, 66), 2**25  # the most this Exim takes (message_size_limit)
        while size >= 1000:
            prober.rcpt(size)
            prober.smtp.rset()
            size //= 2
        held = ask_control(control, {"op": "list", "address": ROOMY})["reservations"]
        assert len(held) <= 1  # one message at most, however it probes
        other = Client(exim, 67)
        room = QUOTA - 10 - sum(r["bytes"] for r in held)
        assert other.rcpt(room) == 250  # another client still finds the rest
        other.quit()
        prober.quit()  # QUIT ends its transaction: its room goes
        assert ask_control(control, {"op": "list", "address": ROOMY})["reservations"] == []
        last = Client(exim, 68)
        assert last.rcpt(QUOTA - 10) == 250
        last.quit()


def test_a_burst_to_a_folder_lets_in_only_the_messages_that_fit_the_folder(work: Path, exim: Exim) -> None:
    """Ten clients at once, each ``SIZE=100000`` to ``roomy+Archive@``: the folder has room for
    4.5 of them, the mailbox for a hundred. Exim asks about ``roomy+archive``: the folder is
    found all the same. 4 accepted (250) and 6 deferred (452) at RCPT; 4 land in ``.Archive``."""
    site, port = prepare(work, exim, archive_quota=QUOTA)
    with policy_daemon(site.config, port):
        exim.start()
        codes = burst(exim, recipient=ARCHIVE)
        assert sorted(codes) == [250] * 4 + [452] * 6, exim.log("main")
        assert len(delivered(site, ".Archive")) == 4
        assert sum(delivered(site, ".Archive")) <= QUOTA


def test_a_full_folder_is_refused_at_rcpt(work: Path, exim: Exim) -> None:
    """Archive already holds 460 kB, over its own 450 kB limit; the mailbox is far from full.
    ``RCPT TO:<roomy+Archive@>`` with ``SIZE=1000`` through Exim: 552, as the daemon answers
    for that recipient when asked directly (``quotagate check``)."""
    site, port = prepare(work, exim, archive_quota=QUOTA)
    (site.maildir("roomy") / ".Archive" / "cur" / "1700000000.M2P2.test,S=460000:2,S").write_bytes(b"x" * 460_000)
    owned_by_mail_user(site.spool)
    assert site.quotagate("scan", "--full") == 0
    assert site.quotagate("check", ARCHIVE, "--size", "1000") == 1  # the daemon's own answer: refused
    with policy_daemon(site.config, port):
        exim.start()
        client = Client(exim, 1)
        assert client.rcpt(1000, ARCHIVE) == 552, exim.log("main")
        client.quit()


def test_a_copy_deferred_at_data_without_prdr_keeps_its_room_when_the_message_is_accepted(
    work: Path, exim: Exim
) -> None:
    """Scenario: no [watch] (most sites see no delivery). Three clients declare SIZE=100000 and
    are let in for roomy@ (300 kB held of its 450 kB). A fourth, without SIZE= and without PRDR,
    sends one 200 kB message to roomy@ and other@ (a mailbox quotagate does not know): at DATA
    roomy@ is deferred (it fits alone, not beside the room held), other@ is not refused, so
    Exim accepts the message (one answer for all) and delivers it to both. Then the three send
    their DATA.
    Expected: roomy@'s copy holds its room in flight once accepted, so the three later messages
    do not all fit: roomy@ never ends over its limit. Its room was let go at DATA, all three
    were accepted, and roomy@ ended at ~500 kB of 450 kB."""
    site, port = prepare(work, exim, watch=False)
    with policy_daemon(site.config, port):
        exim.start()
        holders = [Client(exim, n) for n in range(3)]
        assert [holder.rcpt(MESSAGE) for holder in holders] == [250] * 3
        late = Client(exim, 5)
        assert late.smtp.mail("sender@example.net")[0] == 250  # no SIZE=
        assert late.smtp.rcpt(ROOMY)[0] == 250 and late.smtp.rcpt(OTHER)[0] == 250
        assert late.data(2 * MESSAGE) == 250
        late.quit()
        codes = [holder.data(MESSAGE) for holder in holders]
        for holder in holders:
            holder.quit()
        assert len(delivered(site)) == 1 + codes.count(250), exim.log("main")
        assert sum(delivered(site)) + 10 <= QUOTA, (codes, delivered(site))


def test_a_recipient_exim_refuses_after_the_check_holds_nothing(work: Path, exim: Exim) -> None:
    """Scenario: the RCPT statements where the generated comment puts them, after Exim's own
    ``require verify = recipient``; no router takes ``roomy+junk@`` (550 Unrouteable). A client
    sends four messages, each ``SIZE=100000`` to roomy+junk@ (refused) and other@ (a mailbox
    quotagate does not know), and its DATA.
    Expected: nothing held or in flight for roomy@, and an honest client's 60 kB let in. Asked
    before Exim's own refusal, the daemon held room for roomy+junk@ that each accepted message
    took in flight: roomy@ looked full (400 kB of 450 kB) for reservation_seconds."""
    site, port = prepare(work, exim)
    with policy_daemon(site.config, port):
        exim.start()
        attacker = Client(exim, 1)
        for _ in range(4):
            assert attacker.smtp.mail("sender@example.net", [f"SIZE={MESSAGE}"])[0] == 250
            assert attacker.smtp.rcpt(f"roomy+junk@{DOMAIN}")[0] == 550  # Exim's own refusal
            assert attacker.smtp.rcpt(OTHER)[0] == 250
            assert attacker.data(MESSAGE) == 250
        attacker.quit()
        assert ask_control(work / "control.sock", {"op": "list", "address": ROOMY})["reservations"] == []
        honest = Client(exim, 2)
        assert honest.rcpt(60_000) == 250
        honest.quit()


def test_exims_delivery_hint_frees_no_room_of_a_message_the_delivery_cannot_be(work: Path, exim: Exim) -> None:
    """Scenario: the generated delivery hint in Exim's transport, the spool polled once a minute
    (only the hint tells the daemon of a delivery). A 100,000-byte message for roomy@ is in
    flight (accepted elsewhere and told as Exim's DATA ACL tells it, not landed yet) when Exim
    delivers a small message handed to it on its command line (cron's: no ACL checks it,
    nothing is held for it), and the hint brings on a reading that includes it.
    Expected: the 100,000 bytes stay held: another client is let in for the room left beside
    them, not a byte more (deferred). Before, the hint (it sent no size) released them."""
    site, port = prepare(work, exim, watch=False)
    with site.config.open("a") as config:
        config.write('[watch]\nenabled = true\nmode = "poll"\npoll_seconds = 60\nflush_seconds = 0.1\n')
    parts = exim_config.parts(load_config(site.config), "policy")
    users = {ROOMY: f"{DOMAIN}/roomy", OTHER: f"{DOMAIN}/other"}
    exim.configure(users=users, main=parts.main, acls=parts.acls, verified_acl=parts.acl, transport=parts.transports)
    with policy_daemon(site.config, port):
        exim.start()
        transaction = "instance=far\nclient_address=192.0.2.9\n"
        held = f"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient={ROOMY}\nsize={MESSAGE}\n{transaction}\n"
        accepted = f"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nsize={MESSAGE}\n{transaction}\n"
        assert ask_policy(port, held + accepted) == "action=DUNNO\n\naction=DUNNO\n\n"
        [flight] = ask_control(work / "control.sock", {"op": "list", "address": ROOMY})["reservations"]
        assert (flight["bytes"], flight["state"]) == (MESSAGE, "in flight")
        exim.submit("cron@example.org", ROOMY, message=b"Subject: cron\n\n" + b"x" * 500 + b"\n")
        [small] = delivered(site)
        room = QUOTA - 10 - small - MESSAGE
        deadline, code, n = time.monotonic() + 10, 250, 0
        while code == 250 and time.monotonic() < deadline:  # until the reading includes it
            n += 1
            client = Client(exim, n % 100)
            code = client.rcpt(room + 1)
            client.quit()
        assert code == 452, exim.log("main")
        client = Client(exim, 101)
        assert client.rcpt(room) == 250
        client.quit()


def ask_policy(port: int, requests: str) -> str:
    """The daemon's answers to ``requests``, sent as one client (a half-close ends them)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(requests.encode())
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(4096), b"")).decode()
