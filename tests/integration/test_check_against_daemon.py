"""`quotagate check` and `quotagate reservations` beside the running daemon, asked over its socket:
they decide, and show, as it does (reservations it let expire or saw delivered, Exim's -1 size,
a size past 2^53, a reason the numbers are old, a copy's address)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.integration.checkserved import accepted, run_quotagate, served
from tests.policy.conftest import DOMAIN, FULL, ROOMY, ROOMY_USED, make_site
from tests.spoolgen import add_message, maildir_folder


def test_check_counts_a_reservation_the_daemon_has_let_expire(tmp_path: Path) -> None:
    """Scenario: reservation_seconds = 2 (refresh_seconds at its default, 30). A client asks
    for roomy@ (1000 of 10000 bytes used) with SIZE=5000 and no instance: the daemon holds 5000
    bytes for 2 seconds. Three seconds later the admin runs `quotagate check roomy@ --size 5000`.

    Expected: the reservation has expired, as the daemon decides it: 1000 + 5000 fits, the
    daemon accepts (DUNNO), and check says accept, exit 0.

    Before the fix: the control socket still lists the expired row (the daemon purges expired rows only
    on a check of that mailbox or at its next refresh), check restores it with a brand-new expiry
    (``now + reservation_seconds``) and answers "defer: room is held for messages in progress",
    exit 1 -- while the daemon, asked right after, accepts."""
    site = make_site(tmp_path)
    with served(site, reservation_seconds=2) as s:
        assert accepted(s.postfix(ROOMY, 5000))
        time.sleep(3)
        code, out = s.check(ROOMY, "--size", "5000")
        daemon = s.postfix(ROOMY, 5000, client_address="198.51.100.7")
    assert accepted(daemon), daemon
    assert code == 0, out


def test_check_counts_in_flight_room_whose_delivery_the_daemon_has_seen(tmp_path: Path) -> None:
    """Scenario: roomy@ holds 1000 of 10000 bytes. A Postfix transaction is accepted at RCPT
    and at END-OF-MESSAGE with a 5000-byte message (in flight). The message lands (a 5000-byte
    file in roomy's Maildir), Exim's delivery hint tells the daemon of it, then a scan measures
    roomy at 6000 bytes and the daemon refreshes (refresh_seconds = 1).

    Expected: the daemon counts the landed message once (in the reading) and lets its
    reservation go: a 4000-byte message fits exactly (6000 + 4000 = 10000), DUNNO. check,
    which "shows the daemon's reservations" to decide as it does, should accept too (exit 0).

    Before the fix: the control socket lists the reservation with ``"delivered": true`` (the daemon
    drops it lazily, at its next check of the mailbox); check restores the row without its
    delivery time, so it counts the message twice (in the reading and as room in flight):
    "defer: room is held for messages in progress", exit 1, 5000 bytes reserved. The daemon,
    asked right after, accepts."""
    site = make_site(tmp_path)
    with served(site, refresh_seconds=1) as s:
        t = {"instance": "tx-1", "client_address": "192.0.2.1"}
        assert accepted(s.postfix(ROOMY, 5000, **t))
        assert accepted(s.postfix(ROOMY, 5000, protocol_state="END-OF-MESSAGE", recipient_count=1, **t))
        listed = s.quotagate("reservations", ROOMY)[1]
        assert "in flight" in listed, listed
        add_message(maildir_folder(site.spool / DOMAIN / "roomy" / "Maildir"), 5000, where="new")
        hint = s.ask(request="quotagate_delivery", recipient=ROOMY, size=5000)
        assert accepted(hint), hint
        time.sleep(0.2)
        site.rescan()
        assert site.reading(ROOMY).bytes == ROOMY_USED + 5000
        time.sleep(2.5)  # the daemon's refresh takes the new reading
        code, out = s.check(ROOMY, "--size", "4000")
        daemon = s.postfix(ROOMY, 4000, client_address="198.51.100.7", instance="tx-2")
    assert accepted(daemon), daemon
    assert code == 0, out


def test_check_size_minus_one_is_exims_unknown_size(tmp_path: Path) -> None:
    """Scenario: Exim's ACL sends ``$message_size``, which is -1 at RCPT when the client gave no
    SIZE=; DESIGN ("S unknown when absent, 0 or -1") and the README ("without a size (absent, 0
    or Exim's -1) the classic exclusive check") make it the exclusive check. The daemon asked
    with size=-1 for roomy@ (10% used) answers DUNNO.

    Expected: ``quotagate check roomy@ --size -1 --mta exim`` decides the same: accept, exit 0
    (as ``--size 0`` does).

    Before the fix: a usage error, exit 2 ("not a size: '-1'"): an admin replaying what Exim asked
    gets no decision at all."""
    site = make_site(tmp_path)
    with served(site) as s:
        daemon = s.exim(ROOMY, -1)
        zero = s.check(ROOMY, "--size", "0", "--mta", "exim")
        code, out = s.check(ROOMY, "--size", "-1", "--mta", "exim")
    assert accepted(daemon), daemon
    assert zero[0] == 0, zero
    assert code == 0, out


def test_check_size_past_what_a_store_keeps(tmp_path: Path) -> None:
    """Scenario: a client declares SIZE=99999999999999999999 (20 digits) for roomy@. The daemon
    caps it at 2**53-1 and refuses: "552 5.2.2 Message of 9007199254740991 bytes does not fit".

    Expected: ``quotagate check roomy@ --size 99999999999999999999`` says reject, exit 1.

    Before the fix: exit 2, "more than the largest limit quotagate keeps": check runs the size
    through parse_size (a *limit* parser, capped at 2**63-1) instead of the daemon's
    PolicyRequest.size rules. ``--size 9223372036854775807`` is a rejection, one more is an error."""
    site = make_site(tmp_path)
    with served(site) as s:
        daemon = s.postfix(ROOMY, "99999999999999999999")
        code, out = s.check(ROOMY, "--size", "99999999999999999999")
        full = s.check(FULL, "--size", "99999999999999999999")
    assert daemon.startswith("action=552 5.2.2 Message of"), daemon
    assert code == 1, out
    assert full[0] == 1, full


def test_check_hides_that_an_unmeasurable_full_mailbox_is_judged_on_old_numbers(tmp_path: Path) -> None:
    """Scenario: full@ (10001 of 10000 bytes) is over quota. Its owner makes a plain
    sub-directory ``Maildir/sub/cur``: the next scan cannot measure the mailbox (unknown, with a
    reason) and, as the README says, keeps it "over with its last numbers until it can be
    measured again". `report` shows the reason; the daemon refuses.

    Expected: check's refusal says the numbers are the last ones known and the mailbox could
    not be measured (the reason), since that is what the admin must fix.

    Before the fix: check prints "reject: mailbox is at or over its size limit" with
    "measured <now>, 1 s ago, from a scan" and no word of the unknown state or its reason
    (cli/check.py:_explain prints the reason only for State.UNKNOWN readings)."""
    site = make_site(tmp_path)
    (site.spool / DOMAIN / "full" / "Maildir" / "sub" / "cur").mkdir(parents=True)
    with served(site, reservation_seconds=0) as s:
        s.daemon.stop()
        code, scanned = run_quotagate(s.config, "scan", "--full")
        assert code == 0 and "kept over quota until it can be measured" in scanned, scanned
        s.daemon.start()
        assert s.postfix(FULL) == "action=552 5.2.2 Mailbox is full"
        code, out = s.check(FULL)
    assert code == 1, out
    # the reason the scan recorded (report shows it), or any word that the numbers are kept
    said = out.replace(str(tmp_path), "<tmp>")
    assert "sub-directories holding cur/ or new/" in said or "kept" in said or "last known" in said, out


def test_reservations_for_a_detail_address_lists_nothing(tmp_path: Path) -> None:
    """Scenario: a client is accepted at RCPT for ``roomy+news@`` with SIZE=5000: the daemon
    holds 5000 bytes of roomy@'s room, as the copy ``roomy+news`` (`quotagate reservations`
    without an address lists ``roomy@example.org (copy roomy+news)``).

    Expected: ``quotagate reservations roomy+news@example.org`` -- the address the admin sees
    in the MTA's log -- lists that row (as `check` resolves a detail to its mailbox).

    Before the fix: "no room held for roomy+news@example.org": the control socket filters on
    ``r.mailbox == normalize(address)``, never resolving the detail (nor an alias domain)."""
    site = make_site(tmp_path)
    with served(site) as s:
        assert accepted(s.postfix(f"roomy+news@{DOMAIN}", 5000, instance="t1"))
        everything = s.quotagate("reservations")[1]
        assert "copy roomy+news" in everything, everything
        code, out = s.quotagate("reservations", f"roomy+news@{DOMAIN}")
        check = s.check(f"roomy+news@{DOMAIN}", "--size", "5000")
    assert "5000 bytes in 1 messages held by the daemon" in check[1], check
    assert code == 0 and "roomy+news" in out and "no room held" not in out, out
