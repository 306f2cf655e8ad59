"""Courier's "T" (trashed) flag, as Courier's own maildirquota finds it in a name."""

from __future__ import annotations

import os

import pytest

from quotagate.model import Limits
from tests.agents.conftest import Gate
from tests.servers.courier import Courier
from tests.servers.mailuser import message, own

pytestmark = pytest.mark.servers

LIMIT = 3000


@pytest.mark.parametrize("info", ["2,aT", "2,,T"])
def test_a_t_after_a_character_courier_stops_at_is_counted_as_courier_counts_it(
    gate: Gate, courier: Courier, info: str
) -> None:
    """Scenario: a Maildir under Courier's quota (``maildirmake -q 3000S``); ``deliverquota``
    delivered 500 and 2,000 bytes; the 2,000-byte message was then moved to ``cur/`` with an
    info whose ``T`` follows a character that is not an upper-case letter (``:2,aT``: a keyword
    letter first, as its owner may rename it or a client write flags out of order). Courier's
    ``docount`` reads the flags after ``:2,`` only while they are upper-case letters and stops
    at the first other one, so that ``T`` does not leave the message out: ``maildirmake -q``
    counts 2,500 bytes, and ``deliverquota`` refuses a further 1,000 bytes (exit 77; its
    maildirsize has several lines, so it recounts the files before refusing).

    Expected: the courier profile leaves a message out only where Courier does: 2,500 bytes,
    and ``quotagate check --size 1000`` refuses, as deliverquota does. Today any ``T`` after
    ``:2,`` leaves it out (accounting.Profile.left_out): 500 bytes, and the message is accepted
    at RCPT that Courier then refuses (a late bounce)."""
    maildir = gate.spool / "u" / "Maildir"
    own(maildir.parent)
    courier.make(maildir, f"{LIMIT}S")
    assert courier.deliver(maildir, message(500))
    assert courier.deliver(maildir, message(2000))
    big = next(p for p in (maildir / "new").iterdir() if os.path.getsize(p) == 2000)
    os.rename(big, maildir / "cur" / f"{big.name}:{info}")

    gate.configure("courier")
    gate.add("u", Limits(LIMIT, 0))
    gate.scan()
    counted = gate.files("u")
    refused = gate.refuses("u", 1000)
    assert not courier.deliver(maildir, message(1000))  # deliverquota: over quota
    courier.set_quota(maildir, f"{LIMIT}S")  # Courier counts the files from scratch
    assert courier.count(maildir) == (2500, 2)
    assert (counted, refused) == ((2500, 2), True), gate.output
