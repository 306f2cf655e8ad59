"""Spellings of a recipient through real Exim with the generated configuration: Exim lowers only
A-Z of a local part and delivers each spelling a client writes (``Roomy@``, ``"roomy"@``) as a
recipient of its own, so the daemon holds room for each, at RCPT and at DATA (PRDR too), and
takes no other spelling for a mailbox's."""

from __future__ import annotations

import time
from pathlib import Path

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, Site
from tests.servers.daemon import policy_daemon
from tests.servers.exim import Exim
from tests.servers.process import free_port
from tests.servers.smtp_clients import body
from tests.servers.smtp_raw import Raw, held

QUOTA = 450_000  # roomy@ holds 10 bytes: room for four 100 kB messages
ROOMY, OTHER, KATE = f"roomy@{DOMAIN}", f"other@{DOMAIN}", f"kate@{DOMAIN}"
KELVIN_KATE = f"\u212aate@{DOMAIN}"  # KELVIN SIGN + "ate": Python's str.lower() makes it "kate"
SPELLINGS = ["roomy", "Roomy", "rOomy", "ROomy", "roOmy", '"roomy"', '"room\\y"', "ROOmy"]


def site_and_exim(work: Path, exim: Exim, users: dict[str, str] | None = None) -> tuple[Site, int]:
    """roomy@ (QUOTA, 10 bytes used) and other@ (a hundred times that); quotagate's config with a
    control socket, no [watch] (room in flight stays until it expires) and ``client_hold =
    "100%"`` (one client may fill a mailbox: copies, not its share, are weighed); Exim configured with
    ``exim-config --method policy`` (its main options, ACLs and the RCPT statements, which the
    harness places before ``require verify = recipient``). Returns the site and the daemon's port."""
    spool = work / "mail"
    spool.mkdir()
    (work / "db").mkdir()
    port = free_port()
    config = work / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{work}/db/q.db"\n[spool]\nroot = "{spool}"\n'
        f'[scan]\nlock_file = "{work}/scan.lock"\n'
        f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\ncontrol_socket = "{work}/control.sock"\n'
        'client_hold = "100%"\n'
    )
    site = Site(work, spool, config)
    for address, quota in ((ROOMY, QUOTA), (OTHER, 100 * QUOTA), *((a, QUOTA) for a in users or {})):
        assert site.quotagate("mailbox", "add", address, "--quota", str(quota)) == 0
        site.fill(address.partition("@")[0], 10)
    assert site.quotagate("scan") == 0
    parts = exim_config.parts(load_config(config), "policy")
    exim.configure(
        users={ROOMY: f"{DOMAIN}/roomy", OTHER: f"{DOMAIN}/other", **(users or {})},
        main=parts.main,
        acls=parts.acls,
        verified_acl=parts.acl,
    )
    return site, port


def delivered(site: Site, exim: Exim) -> list[int]:
    """The sizes of the files in roomy's new/, once Exim's queue is empty."""
    deadline = time.monotonic() + 20
    while exim.queue_count() and time.monotonic() < deadline:
        time.sleep(0.1)
    new = site.maildir("roomy") / "new"
    return [f.stat().st_size for f in new.iterdir()] if new.is_dir() else []


def test_each_spelling_of_a_recipient_is_a_copy_held_apart(work: Path, exim: Exim) -> None:
    """Scenario: one client sends ``MAIL SIZE=100000``, then ``RCPT TO:`` eight spellings of
    roomy@example.org (roomy, Roomy, rOomy, ``"roomy"``, ``"room\\y"``...), then a 100 kB
    message. Exim delivers each spelling as a recipient of its own, while its ACL's
    ``$local_part`` is the same lowered, unquoted ``roomy`` for all.
    Expected: each spelling is a copy held apart: at most four let in, the mailbox not
    overfilled (it was: 800 kB into 450 kB, every spelling held as one)."""
    site, port = site_and_exim(work, exim)
    with policy_daemon(site.config, port):
        exim.start()
        with Raw(exim.port, "127.0.0.35") as c:
            c.cmd("EHLO client.test")
            assert c.cmd("MAIL FROM:<s@example.net> SIZE=100000")[0] == 250
            codes = [c.cmd(f"RCPT TO:<{local}@{DOMAIN}>")[0] for local in SPELLINGS]
            assert c.cmd("DATA")[0] == 354
            c.send(body(100_000) + b".\r\n")
            assert c.reply()[0] == 250
            c.cmd("QUIT")
        sizes = delivered(site, exim)
    assert codes.count(250) == 4 and len(sizes) == 4, codes
    assert sum(sizes) + 10 <= QUOTA


def test_each_spelling_is_weighed_apart_at_data_with_prdr(work: Path, exim: Exim) -> None:
    """Scenario: as above, without SIZE= (every RCPT let in: the size is not known yet) and
    with PRDR, so that Exim asks the daemon about each recipient at DATA, where its
    ``$local_part`` is ``roomy`` for all eight.
    Expected: each recipient is weighed as the copy it is: four accepted, four refused, the
    mailbox not overfilled (eight checks of "roomy" replaced one hold, and let in all)."""
    site, port = site_and_exim(work, exim)
    with policy_daemon(site.config, port):
        exim.start()
        with Raw(exim.port, "127.0.0.36") as c:
            c.cmd("EHLO client.test")
            assert c.cmd("MAIL FROM:<s@example.net> PRDR")[0] == 250
            assert [c.cmd(f"RCPT TO:<{local}@{DOMAIN}>")[0] for local in SPELLINGS] == [250] * 8
            assert c.cmd("DATA")[0] == 354
            c.send(body(100_000) + b".\r\n")
            assert c.reply()[0] == 353  # PRDR: one reply per recipient follows, then the message's
            per_recipient = [c.reply()[0] for _ in SPELLINGS]
            c.reply()
            c.cmd("QUIT")
        sizes = delivered(site, exim)
    assert per_recipient.count(250) == 4 and len(sizes) == 4, per_recipient
    assert sum(sizes) + 10 <= QUOTA


def test_a_local_part_exim_does_not_lower_to_a_mailbox_holds_nothing_there(work: Path, exim: Exim) -> None:
    """Scenario: kate@ (450 kB, 10 bytes used). A client says ``MAIL SIZE=445000 SMTPUTF8`` and
    ``RCPT TO:<\\u212aate@example.org>`` (KELVIN SIGN, then "ate"): Exim lowers only A-Z, routes
    it nowhere and answers 550; Python's str.lower() makes it kate@. The client then sends a
    445 kB message to other@ and quits; another client asks for kate@ with ``SIZE=10000``.
    Expected: 250, nothing held for kate@: the daemon took the address for kate's and held
    445 kB, which went in flight with the message kate@ never gets (452 for reservation_seconds:
    one message blocked any number of mailboxes)."""
    site, port = site_and_exim(work, exim, users={KATE: f"{DOMAIN}/kate"})
    with policy_daemon(site.config, port):
        exim.start()
        with Raw(exim.port, "127.0.0.32") as attacker:
            attacker.cmd("EHLO client.test")
            assert attacker.cmd("MAIL FROM:<s@example.net> SIZE=445000 SMTPUTF8")[0] == 250
            assert attacker.cmd(f"RCPT TO:<{KELVIN_KATE}>".encode())[0] == 550
            assert attacker.cmd(f"RCPT TO:<{OTHER}>")[0] == 250
            assert attacker.cmd("DATA")[0] == 354
            attacker.send(body(445_000) + b".\r\n")
            assert attacker.reply()[0] == 250
            assert attacker.cmd("QUIT")[0] == 221
        with Raw(exim.port, "127.0.0.33") as honest:
            honest.cmd("EHLO honest.test")
            assert honest.cmd("MAIL FROM:<h@example.net> SIZE=10000")[0] == 250
            code, text = honest.cmd(f"RCPT TO:<{KATE}>")
            honest.cmd("QUIT")
        assert (code, held(work / "control.sock", KATE)) == (250, []), text


def test_an_unbracketed_rcpt_spelling_is_a_copy_of_its_own(work: Path, exim: Exim) -> None:
    """Scenario: roomy@ (450 kB, 10 bytes used). A client says ``MAIL SIZE=300000``, then
    ``RCPT TO:<roomy@example.org>`` and ``RCPT TO:Roomy@example.org`` (no angle brackets, which
    Exim takes), then a 300 kB message.
    Expected: ``Roomy`` is a copy of its own, as with brackets: refused at RCPT (no room for a
    second 300 kB), the mailbox not overfilled. (Only ``<...>`` was read from the command: for
    the bare form the daemon fell back to the lowered ``roomy``, replaced the first hold with it
    and let both in.)"""
    site, port = site_and_exim(work, exim)
    with policy_daemon(site.config, port):
        exim.start()
        with Raw(exim.port, "127.0.0.37") as c:
            c.cmd("EHLO client.test")
            assert c.cmd("MAIL FROM:<s@example.net> SIZE=300000")[0] == 250
            first = c.cmd(f"RCPT TO:<roomy@{DOMAIN}>")[0]
            second = c.cmd(f"RCPT TO:Roomy@{DOMAIN}")
            if second[0] == 250:
                assert c.cmd("DATA")[0] == 354
                c.send(body(300_000) + b".\r\n")
                c.reply()
            c.cmd("QUIT")
        sizes = delivered(site, exim)
    assert first == 250
    assert second[0] != 250 and sum(sizes) + 10 <= QUOTA, (second, sizes)
