"""When the delivery agents believe a ``maildirsize`` that claims more than the files hold.

quotagate (``accounting.enforced``) counts the claims where the program believes them. Its rules:

* Courier (courier-libs ``maildir/maildirquota.c``, ``docheckquota``) and Exim 4.96
  (``src/transports/tf_maildir.c``, ``maildir_ensure_sizefile``) go by the claims only while the
  claims *plus the message being delivered* fit; when they do not, the claims are believed only
  if the file holds a single size line and is less than 15 minutes old. Otherwise the mailbox is
  counted again from the files and the message is judged against that count. Every delivery
  appends a line, so a maildirsize with more than one size line is the ordinary case.
* Courier, Exim and Dovecot (``quota-maildir.c``, ``maildirsize_read``: a 5120-byte buffer,
  "we'll need to recalculate the quota") never believe a file of 5120 bytes or more.
* Dovecot (``maildirsize_parse``) *does* believe claims over the limit when the file has a single
  size line and is less than 15 minutes old (``MAILDIRSIZE_STALE_SECS``).

Each test below puts one mailbox in such a state with the real program, then asks quotagate and
the program about the same message.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from quotagate.model import Limits
from tests.agents.conftest import Gate
from tests.servers.courier import Courier
from tests.servers.dovecot import Dovecot
from tests.servers.exim import MAIL_UID
from tests.servers.mailuser import checked, message, own, run_as_mail_user

LIMIT = 10_000


def _delete_one(maildir: Path) -> None:
    """A cleanup job (or the user's shell) removes a message without touching maildirsize."""
    victim = sorted((maildir / "new").iterdir())[0]
    checked(run_as_mail_user(["find", str(maildir / "new"), "-name", victim.name, "-delete"]))


def _courier_mailbox(gate: Gate, courier: Courier) -> Path:
    maildir = gate.spool / "u" / "Maildir"
    own(maildir.parent)
    courier.make(maildir, f"{LIMIT}S")
    assert courier.deliver(maildir, message(4000, 3))
    assert courier.deliver(maildir, message(4000, 3))
    return maildir


@pytest.mark.servers
def test_courier_recounts_a_maildirsize_of_several_lines_before_refusing(gate: Gate, courier: Courier) -> None:
    """Scenario: Courier's deliverquota delivered two messages of 4000 bytes (maildirsize:
    the definition, ``0 0`` from ``maildirmake -q``, then one line per delivery: 3 size lines,
    8000 claimed); a cleanup job deletes one (files: 4000). A 5000-byte message arrives.

    Courier: 8000 + 5000 > 10000, but the file has 3 size lines, so ``docheckquota`` recounts
    (4000 + 5000 <= 10000) and delivers; the file is rewritten as ``4000 1`` + ``5000 1``
    (seen with Debian's maildrop 2.9.3). Expected: quotagate accepts."""
    maildir = _courier_mailbox(gate, courier)
    assert len((maildir / "maildirsize").read_text().splitlines()) == 4  # definition + 3 size lines
    _delete_one(maildir)
    gate.configure("courier")
    gate.add("u", Limits(LIMIT))
    gate.scan()
    ours = gate.accepts("u", 5000)
    said = gate.output
    theirs = courier.deliver(maildir, message(5000, 3))
    assert theirs, "deliverquota refused: the premise of this test does not hold"
    assert ours, f"quotagate refused what deliverquota delivers: {said} (counted {gate.counted('u')})"


@pytest.mark.servers
def test_courier_recounts_a_one_line_maildirsize_older_than_15_minutes(gate: Gate, courier: Courier) -> None:
    """Scenario: as above, but Courier recounted the mailbox (``maildirmake -q``: one size line,
    8000 bytes) before the cleanup job removed a message, and that was more than 15 minutes
    ago. Courier (``docheckquota``: ``nlines == 1 && tm < st_mtime + 15*60`` is the only case
    where over-quota claims are believed) recounts and delivers the 5000-byte message.
    Expected: quotagate accepts."""
    maildir = _courier_mailbox(gate, courier)
    courier.set_quota(maildir, f"{LIMIT}S")  # Courier recounts: one size line, 8000 bytes
    _delete_one(maildir)
    an_hour_ago = time.time() - 3600
    os.utime(maildir / "maildirsize", (an_hour_ago, an_hour_ago))
    gate.configure("courier")
    gate.add("u", Limits(LIMIT))
    gate.scan()
    ours = gate.accepts("u", 5000)
    said = gate.output
    theirs = courier.deliver(maildir, message(5000, 3))
    assert theirs, "deliverquota refused: the premise of this test does not hold"
    assert ours, f"quotagate refused what deliverquota delivers: {said} (counted {gate.counted('u')})"


@pytest.mark.servers
@pytest.mark.mta
def test_dovecot_recounts_a_maildirsize_of_5120_bytes_or_more(gate: Gate, dovecot: Dovecot) -> None:
    """Scenario: Dovecot (``quota = maildir``, no grace) holds two 4000-byte messages; one is
    expunged without the quota plugin (claims 8000, files 4000); the maildirsize has grown past
    5120 bytes with lines that cancel out (deliveries and quota-aware expunges: ``1234 1`` /
    ``-1234 -1``). Dovecot's ``maildirsize_read`` reads at most 5120 bytes and recalculates a
    file that fills its buffer: it counts 4000 and delivers a 5000-byte message (the file is
    rewritten as ``4000 1`` + ``5000 1``). The scan reads up to 16 x 5120 bytes and
    ``accounting.enforced`` counts the 8000 claimed bytes (``maildirsize.MAX_TRUSTED_BYTES``
    is only honoured by the daemon's live reader). Expected: accept."""
    dovecot.configure(backend="maildir", limit_bytes=LIMIT, extra="  quota_grace = 0\n")
    assert dovecot.deliver("u", message(4000, 3))
    assert dovecot.deliver("u", message(4000, 3))
    dovecot.doveadm("u", "-o", "mail_plugins=", "expunge", "mailbox", "INBOX", "uid", "1")
    maildirsize = gate.spool / "u" / "Maildir" / "maildirsize"
    with maildirsize.open("a") as f:
        f.write("1234 1\n-1234 -1\n" * 330)
    assert maildirsize.stat().st_size >= 5120
    gate.configure("dovecot", grace="0")
    gate.add("u", Limits(LIMIT))
    gate.scan()
    ours = gate.accepts("u", 5000)
    said = gate.output
    theirs = dovecot.deliver("u", message(5000, 3))
    assert theirs, "dovecot-lda refused: the premise of this test does not hold"
    assert ours, f"quotagate refused what dovecot-lda delivers: {said} (counted {gate.counted('u')})"


@pytest.mark.servers
@pytest.mark.mta
def test_dovecot_believes_a_fresh_one_line_maildirsize_over_the_limit(gate: Gate, dovecot: Dovecot) -> None:
    """Scenario: Dovecot (``quota = maildir``, default 10% grace) let a mailbox go past its
    limit (6000 + 4500 = 10500 of 10000) and, refusing the next message, recounted it into a
    one-line maildirsize (``10500 2``). The user's shell (or a cleanup job, or an IMAP service
    without the quota plugin) removes the 6000-byte message: files 4500. For 15 minutes Dovecot
    believes the file (``maildirsize_parse``: over quota, ``line_count`` 1, mtime younger than
    ``MAILDIRSIZE_STALE_SECS``) and refuses a 1000-byte message: "Quota exceeded". quotagate's
    ``accounting.enforced`` drops claims over the limit and counts the files (4500): it accepts,
    and the message bounces late. Expected: reject (or dunno), as Dovecot will."""
    dovecot.configure(backend="maildir", limit_bytes=LIMIT)
    assert dovecot.deliver("u", message(6000, 3))
    assert dovecot.deliver("u", message(4500, 3))  # within the grace
    assert not dovecot.deliver("u", message(1000, 3))  # over: Dovecot recounts, one line
    maildirsize = gate.spool / "u" / "Maildir" / "maildirsize"
    assert maildirsize.read_text().splitlines()[1:] == ["10500 2"]
    dovecot.doveadm("u", "-o", "mail_plugins=", "expunge", "mailbox", "INBOX", "uid", "1")
    gate.configure("dovecot")
    gate.add("u", Limits(LIMIT))
    gate.scan()
    ours = gate.accepts("u", 1000)
    said = gate.output
    theirs = dovecot.deliver("u", message(1000, 3))
    assert not theirs, "dovecot-lda delivered: the premise of this test does not hold"
    assert not ours, f"quotagate accepts what dovecot-lda refuses: {said} (counted {gate.counted('u')})"


def test_exim_recounts_a_maildirsize_of_several_lines_before_deferring(gate: Gate) -> None:
    """Scenario (no Exim run: a Maildir laid out as Exim 4.96's appendfile leaves it, with
    ``quota = 10000``, ``maildir_use_size_file``, ``quota_directory``): Exim recounted the
    mailbox once (``10000S,0C`` / ``0 0``) and appended ``4000 1`` for each of two deliveries
    (``maildir_record_length``); a cleanup job removed one message. A 5000-byte message comes.

    Exim (``maildir_ensure_sizefile``): size 8000 + message 5000 > quota, and ``linecount > 1``:
    "over quota and maildirsize has more than 1 entry: recalculating" -> 4000 + 5000 <= 10000,
    delivered. Expected: quotagate accepts."""
    maildir = gate.spool / "u" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1700000001.H1P1.mx").write_bytes(message(4000, 3))
    (maildir / "maildirsize").write_text("10000S,0C\n0 0\n4000 1\n4000 1\n")
    for dirpath, dirnames, filenames in os.walk(maildir.parent):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(entry, MAIL_UID, MAIL_UID, follow_symlinks=False)
    gate.configure("exim")
    gate.add("u", Limits(LIMIT))
    gate.scan()
    assert gate.files("u") == (4000, 1)
    assert gate.accepts("u", 5000), f"{gate.output} (counted {gate.counted('u')})"


@pytest.mark.servers
def test_courier_believes_a_fresh_one_line_maildirsize_over_the_limit(gate: Gate, courier: Courier) -> None:
    """Scenario: the admin lowered a mailbox's limit from 20000 to 10000 bytes while it held
    10500 (``maildirmake -q 10000S``: Courier recounts, one size line ``10500 2``); the user's
    shell (or a cleanup job) then removes the 6000-byte message: files 4500. For 15 minutes
    Courier believes the file (``docheckquota``: ``nlines == 1 && tm < st_mtime + 15*60`` ->
    over quota) and ``deliverquota`` refuses a 1000-byte message (exit 77). quotagate's
    ``accounting.enforced`` drops claims over the limit and counts the files: it accepts, and
    the message bounces late. Expected: reject (or dunno), as Courier will."""
    maildir = gate.spool / "u" / "Maildir"
    own(maildir.parent)
    courier.make(maildir, "20000S")
    assert courier.deliver(maildir, message(6000, 3))
    assert courier.deliver(maildir, message(4500, 3))
    courier.set_quota(maildir, f"{LIMIT}S")  # the limit lowered: Courier recounts, one line
    assert courier.count(maildir) == (10500, 2)
    victim = max((maildir / "new").iterdir(), key=lambda p: p.stat().st_size)
    checked(run_as_mail_user(["find", str(maildir / "new"), "-name", victim.name, "-delete"]))
    gate.configure("courier")
    gate.add("u", Limits(LIMIT))
    gate.scan()
    ours = gate.accepts("u", 1000)
    said = gate.output
    theirs = courier.deliver(maildir, message(1000, 3))
    assert not theirs, "deliverquota delivered: the premise of this test does not hold"
    assert not ours, f"quotagate accepts what deliverquota refuses: {said} (counted {gate.counted('u')})"
