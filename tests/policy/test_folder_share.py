"""``local+folder@domain`` is checked against the folder's own limit (``[[folders]] quota``), and
the share one client may hold there (``[policy] client_hold``, 10% by default) is taken of the
folder's limit too: a share of the mailbox's alone (or none, for an unlimited mailbox) let one
client take all of a small folder's room from every other client, with many small transactions
that never send data.
"""

from __future__ import annotations

import time

import pytest

from quotagate.config import parse_config
from quotagate.model import Limits, Mailbox
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from quotagate.scan import run_scan
from quotagate.store import open_store
from tests.policy.conftest import DOMAIN, ROOMY, Site, request, restarted
from tests.policy.test_data_stage import ask
from tests.spoolgen import add_message, maildir_folder

FOLDER_QUOTA = 10_000
ATTACKER, OTHER = "203.0.113.5", "198.51.100.1"
ARCHIVE = ROOMY.replace("@", "+Archive@")


def service_with(site: Site, mailbox_limit: int) -> PolicyService:
    store = open_store(site.db_url)
    try:
        store.upsert_mailboxes([Mailbox(ROOMY, Limits(mailbox_limit))])
    finally:
        store.close()
    data = site.data()  # client_hold: the default, 10%
    data["folders"] = [{"match": "Archive", "quota": str(FOLDER_QUOTA)}]
    return site.service(parse_config(data), Metrics())


@pytest.mark.parametrize("mailbox_limit", [0, 1_000_000], ids=["mailbox-unlimited", "mailbox-100x-the-folder"])
def test_one_client_holds_at_most_its_share_of_a_folder_with_a_limit_of_its_own(site: Site, mailbox_limit: int) -> None:
    """Attack: one client opens ten transactions, each RCPT TO:<roomy+Archive> with SIZE=1000,
    and never sends data; the folder Archive has a limit of 10,000 bytes of its own. Expected:
    the client holds at most client_hold (10% of the folder's 10,000) or one message: the second
    transaction is deferred, and another client still finds room in the folder."""
    service = service_with(site, mailbox_limit)
    answers = [ask(service, request(ARCHIVE, 1_000, client=ATTACKER, instance=f"t{n}")) for n in range(10)]
    holding = service.reservations.held(ROOMY, time.time(), 0).bytes
    other = ask(service, request(ARCHIVE, 1_000, client=OTHER, instance="o"))
    assert other == "DUNNO", (
        f"another client deferred ({other}): one client holds {holding} of the folder's {FOLDER_QUOTA} bytes"
        f" ({answers.count('DUNNO')} of its 10 transactions let in)"
    )


def test_room_a_client_holds_for_the_mailbox_does_not_count_against_a_folders_own_share(site: Site) -> None:
    """A client holding 5,000 bytes for roomy (a mailbox of 1,000,000) sends 500 bytes for
    roomy+Archive, whose own limit is 10,000 (a share of 1,000): it holds nothing in the
    folder, so the message is let in. Counted against the folder's share, the room it held for
    the mailbox deferred it."""
    service = service_with(site, 1_000_000)
    assert ask(service, request(ROOMY, 5_000, client=ATTACKER, instance="t1")) == "DUNNO"
    assert ask(service, request(ARCHIVE, 500, client=ATTACKER, instance="t2")) == "DUNNO"
    assert ask(service, request(ARCHIVE, 600, client=ATTACKER, instance="t3")).startswith("452")  # 1,100 > 1,000


def _spellings(n: int) -> list[str]:
    """``n`` spellings of roomy+Archive@ that differ in the case of the mailbox's local part."""
    local, domain = ROOMY.split("@")
    return [
        "".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(local)) + f"+Archive@{domain}"
        for mask in range(n)
    ]


def test_a_folders_share_is_not_renewed_by_each_spelling_of_the_address(site: Site) -> None:
    """Attack: ten transactions from one client, each ``SIZE=1000`` and never any DATA, name
    Archive (its own limit 10,000, so a share of 1,000) under ten spellings: ``roomy+Archive``,
    ``Roomy+Archive``, ``rOomy+Archive``... Each spelling is a copy of its own (Postfix delivers
    each), but they all land in the same folder.

    Expected: the share is the folder's, whatever the spelling: the client holds at most 1,000
    bytes of Archive's room, and another client's 1,000-byte message still finds room."""
    service = service_with(site, 1_000_000)
    for n, address in enumerate(_spellings(10)):
        ask(service, request(address, 1_000, client=ATTACKER, instance=f"t{n}"))
    holding = service.reservations.held_in(ROOMY, "Archive").bytes
    assert holding <= 1_000, f"one client holds {holding} of the folder's {FOLDER_QUOTA} bytes"
    assert ask(service, request(ARCHIVE, 1_000, client=OTHER, instance="o")) == "DUNNO"


def test_room_held_for_the_mailbox_does_not_shut_a_small_folder(site: Site) -> None:
    """Attack: a mailbox of 1,000,000 bytes has a folder Archive with a limit of its own of
    10,000. One client holds ``RCPT TO:<roomy@> SIZE=100000`` (its whole share of the mailbox)
    and never sends DATA.

    Expected: mail for INBOX never lands in Archive, so the room held for it counts against the
    mailbox's limit, not the folder's: another client's 1,000 bytes for roomy+Archive are let
    in. Room held for Archive itself still counts against Archive: 9,000 more do not fit."""
    service = service_with(site, 1_000_000)
    assert ask(service, request(ROOMY, 100_000, client=ATTACKER, instance="probe")) == "DUNNO"
    assert ask(service, request(ARCHIVE, 1_000, client=OTHER, instance="o")) == "DUNNO"
    assert ask(service, request(ARCHIVE, 9_001, client="192.0.2.9", instance="p")) != "DUNNO"


def _scanned_with_geloscht_rule(site: Site, limit: dict[str, object] | None = None) -> PolicyService:
    """roomy (1 MB) scanned with a rule ``match = "Gelöscht"`` (10,000 bytes, or ``limit``), and
    its service."""
    data = site.data()
    data["folders"] = [{"match": "Gelöscht", **(limit or {"quota": "10000"})}]
    config = parse_config(data)
    store = open_store(site.db_url)
    try:
        store.upsert_mailboxes([Mailbox(ROOMY, Limits(1_000_000))])
        run_scan(config, store)
    finally:
        store.close()
    return site.service(config, Metrics())


def test_a_full_folder_named_as_an_imap_server_shows_it_is_full(site: Site) -> None:
    """Scenario: the rule ``match = "Gelöscht"`` (as Dovecot's ``quota_rule`` is written) gives
    the folder kept on disk as ``.Gel&APY-scht`` (modified UTF-7) its own limit, and it is full.
    Over SMTPUTF8 the recipient ``roomy+Gelöscht@`` is delivered into it.

    Expected: both spellings find the folder's usage (552), and hold room under one folder."""
    md = site.spool / DOMAIN / "roomy" / "Maildir"
    add_message(maildir_folder(md, "Gel&APY-scht"), 10_001)
    service = _scanned_with_geloscht_rule(site)

    assert ask(service, request(f"roomy+Gel&APY-scht@{DOMAIN}", 100)).startswith("552")
    assert ask(service, request(f"roomy+Gelöscht@{DOMAIN}", 100)).startswith("552")
    assert service.folder_of_copy("roomy+Gel&APY-scht") == service.folder_of_copy("roomy+Gelöscht") == "gelöscht"


def test_a_restored_row_of_the_version_before_folders_were_kept_holds_room_in_its_folder(site: Site) -> None:
    """Scenario: the daemon restarts after the upgrade with the reservations file the previous
    version wrote (rows end at the copy, no folder): 9,500 bytes in flight for
    ``roomy+Archive`` (the folder's limit 10,000). Another client then asks for 1,000.

    Expected: the restored room is the folder's (its copy names it): 452."""
    store = open_store(site.db_url)
    try:
        store.upsert_mailboxes([Mailbox(ROOMY, Limits(1_000_000))])
    finally:
        store.close()
    now = time.time()
    row = ["203.0.113.5", "t1", ROOMY, 9_500, now, now + 500, "flight", None, "roomy+Archive"]
    service = restarted(site, [{"match": "Archive", "quota": str(FOLDER_QUOTA)}], [row])

    assert ask(service, request(ARCHIVE, 1_000, client=OTHER, instance="o")).startswith("452")


def test_an_empty_utf8_twin_does_not_hide_a_full_utf7_folder(site: Site) -> None:
    """Attack: beside Dovecot's full ``.Gel&APY-scht``, the owner makes ``.Gelöscht`` (empty),
    the same folder to an IMAP server. Expected: ``roomy+Gelöscht@`` is weighed against the
    one holding more, not let into the full folder by its empty twin."""
    md = site.spool / DOMAIN / "roomy" / "Maildir"
    add_message(maildir_folder(md, "Gel&APY-scht"), 10_001)  # Dovecot's folder, full
    maildir_folder(md, "Gelöscht")  # the owner's empty twin, same IMAP name
    service = _scanned_with_geloscht_rule(site)
    folders = service.snapshot.readings[ROOMY].usage.folders
    assert sorted(f.name for f in folders) == ["Gel&APY-scht", "Gelöscht", "INBOX"]

    assert ask(service, request(f"roomy+Gel&APY-scht@{DOMAIN}", 100)).startswith("552")  # as today
    answer = ask(service, request(f"roomy+Gelöscht@{DOMAIN}", 100))
    assert answer != "DUNNO", "roomy+Gelöscht@ weighed against the empty twin: the full Gel&APY-scht takes mail"


def test_a_twin_with_more_bytes_does_not_hide_a_twin_over_its_message_limit(site: Site) -> None:
    """Attack: the rule gives Gelöscht a limit of 5 messages; Dovecot's ``.Gel&APY-scht`` holds 6.
    The owner makes the twin ``.Gelöscht`` holding one big message. Expected: each limit is
    weighed against the most either twin holds of it: both spellings refused, not let in
    because the twin with more bytes holds fewer messages."""
    md = site.spool / DOMAIN / "roomy" / "Maildir"
    full = maildir_folder(md, "Gel&APY-scht")
    for _ in range(6):
        add_message(full, 100)
    add_message(maildir_folder(md, "Gelöscht"), 5_000)
    service = _scanned_with_geloscht_rule(site, {"messages": 5})
    config = service.config

    answers = [
        ask(site.service(config, Metrics()), request(f"roomy+{spelling}@{DOMAIN}", 100))
        for spelling in ("Gel&APY-scht", "Gelöscht")
    ]

    assert "DUNNO" not in answers, answers
