"""quotagate under the ``courier`` profile against Courier's own maildirquota (Debian's maildrop).

``maildirmake`` makes the Maildirs and folders, ``deliverquota`` delivers, ``maildirmake -q``
counts a mailbox from scratch into ``maildirsize``; and for a message of every size around the
boundary, ``quotagate check --size`` says what ``deliverquota`` then does (exit 0 or 77).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from quotagate.model import Limits
from tests.agents.boundary import Case, around, at_and_past, counting, disagreements
from tests.agents.conftest import Gate
from tests.agents.oddnames import ODD, followed, lay
from tests.servers.courier import Courier
from tests.servers.mailuser import checked, message, own, run_as_mail_user

pytestmark = pytest.mark.servers

LIMIT = 10_000


def _flag(maildir: Path, folder: str, flags: str) -> None:
    """What a mail client does on reading: every message of ``folder`` moved to cur/ with ``flags``."""
    base = maildir if folder == "INBOX" else maildir / f".{folder}"
    for entry in sorted(os.listdir(base / "new")):
        os.rename(base / "new" / entry, base / "cur" / f"{entry}:2,{flags}")


def test_counts_as_courier_does(gate: Gate, courier: Courier) -> None:
    maildir = gate.spool / "u" / "Maildir"
    own(maildir.parent)
    courier.make(maildir, "1000000S,500C", folders=("Trash", "Sent"))
    for size, folder in [(500, ""), (1200, ""), (3000, ".Trash"), (800, ".Sent")]:
        assert courier.deliver(maildir / folder if folder else maildir, message(size))
    _flag(maildir, "Sent", "S")
    assert courier.deliver(maildir, message(700))
    _flag(maildir, "INBOX", "ST")  # all of INBOX marked deleted: T leaves the quota
    assert courier.deliver(maildir, message(900))  # still in new/: counts
    gate.configure("courier")
    gate.add("u", Limits(1_000_000, 500))
    courier.set_quota(maildir, "1000000S,500C")  # Courier counts it all again
    gate.scan()
    assert gate.files("u") == gate.counted("u") == courier.count(maildir) == (800 + 900, 2)
    info = gate.reading("u").usage.maildirsize
    assert info is not None and info.agrees_with(*courier.count(maildir))


@pytest.mark.parametrize(
    "cases",
    [around(LIMIT, 0, 6000), at_and_past(LIMIT), counting(10)],
    ids=["around", "at-limit", "messages"],
)
def test_check_agrees_with_deliverquota(gate: Gate, courier: Courier, cases: list[Case]) -> None:
    limits = Limits(LIMIT, 10)
    gate.configure("courier")

    def deliver(user: str, data: bytes) -> bool:
        maildir = gate.spool / user / "Maildir"
        if not maildir.exists():
            own(maildir.parent)
            courier.make(maildir, f"{LIMIT}S,10C", folders=("Trash",))
            assert courier.deliver(maildir / ".Trash", message(4000))  # never counts
        return courier.deliver(maildir, data)

    assert disagreements(gate, cases, limits, deliver) == []


def test_a_fix_keeps_the_limit_courier_enforces_unless_set_limit(gate: Gate, courier: Courier) -> None:
    maildir = gate.spool / "u" / "Maildir"
    own(maildir.parent)
    courier.make(maildir, "10000S,10C")
    assert courier.deliver(maildir, message(3000))
    (maildir / "maildirsize").write_text("10000S,10C\n100 1\n")  # stale: Courier would let 9900 in
    gate.configure("courier")
    gate.add("u", Limits(5000, 10))

    gate.scan("--fix-maildirsize")
    assert (maildir / "maildirsize").read_text().splitlines()[0] == "10000S,10C"
    assert gate.files("u") == gate.counted("u") == courier.count(maildir) == (3000, 1)
    assert gate.run("report", "--format", "json") == 0
    report = json.loads(gate.output)
    assert report[0]["maildirsize"] == "agrees"

    gate.scan("--fix-maildirsize", "--set-limit")
    assert (maildir / "maildirsize").read_text().splitlines()[0] == "5000S,10C"
    assert courier.count(maildir) == (3000, 1)
    assert (gate.accepts("u", 2001), gate.accepts("u", 2000)) == (False, True)
    assert not courier.deliver(maildir, message(2001))
    assert courier.deliver(maildir, message(2000))


@pytest.mark.parametrize(("kind", "name"), ODD)
def test_odd_entries_count_as_courier_recounts_them(gate: Gate, courier: Courier, kind: str, name: str) -> None:
    maildir = gate.spool / "u" / "Maildir"
    lay(maildir, kind, name)
    gate.configure("courier")
    gate.add("u", Limits(1_000_000, 500))
    gate.scan()
    courier.set_quota(maildir, "1000000S,500C")
    bytes_, messages = gate.files("u")
    assert (bytes_ + followed(kind, ",S=" in name), messages) == courier.count(maildir)


def test_a_maildirsize_claiming_more_than_the_files_counts_as_courier_enforces_it(gate: Gate, courier: Courier) -> None:
    """A message deleted by a cleanup job after Courier's recount (one line): deliverquota goes by
    the file's claims while they are under the limit and refuses (exit 77) what the files have
    room for."""
    maildir = gate.spool / "u" / "Maildir"
    own(maildir.parent)
    courier.make(maildir, f"{LIMIT}S")
    assert courier.deliver(maildir, message(4000, 3))
    assert courier.deliver(maildir, message(4000, 3))
    courier.set_quota(maildir, f"{LIMIT}S")  # Courier recounts: one line, 8000 bytes
    victim = sorted((maildir / "new").iterdir())[0]
    checked(run_as_mail_user(["find", str(maildir / "new"), "-name", victim.name, "-delete"]))
    gate.configure("courier")
    gate.add("u", Limits(LIMIT))
    gate.scan()
    assert gate.counted("u") == (8000, 2)
    assert (gate.accepts("u", 5000), courier.deliver(maildir, message(5000, 3))) == (False, False)
