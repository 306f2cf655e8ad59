"""quotagate under the ``dovecot`` and ``dovecot-count`` profiles against Dovecot 2.3 itself.

Dovecot's LDA writes the mailboxes; ``doveadm`` counts them (``quota get`` after ``quota
recalc``, the maildirsize it rewrites, ``mailbox status vsize``); and for a message of every size
around the boundary, ``quotagate check --size`` says what ``dovecot-lda`` then does.
"""

from __future__ import annotations

import pytest

from quotagate.model import Limits
from tests.agents.boundary import Case, around, at_and_past, counting, disagreements
from tests.agents.conftest import ACCEPT, Gate
from tests.agents.oddnames import ODD, followed, lay
from tests.servers.dovecot import Dovecot
from tests.servers.mailuser import message

pytestmark = [pytest.mark.servers, pytest.mark.mta]

LIMIT = 10_000
GRACE = LIMIT // 10  # Dovecot's quota_grace default: 10%
PROFILE = {"maildir": "dovecot", "count": "dovecot-count"}


def _deliver_all(dovecot: Dovecot, user: str) -> None:
    """Mail of many shapes, into INBOX and two folders; some of it read (moved to cur/ with flags)."""
    for size, lines, folder in [(500, 1, "INBOX"), (1234, 7, "INBOX"), (2000, 30, "Sent"), (777, 3, "Lists.Debian")]:
        assert dovecot.deliver(user, message(size, lines), folder)
    dovecot.doveadm(user, "flags", "add", "\\Seen", "mailbox", "INBOX", "1")
    dovecot.doveadm(user, "flags", "add", "\\Deleted \\Seen", "mailbox", "Sent", "all")


def _maildirsize_totals(gate: Gate, user: str) -> tuple[int, int]:
    lines = (gate.spool / user / "Maildir" / "maildirsize").read_text().splitlines()[1:]
    pairs = [tuple(map(int, line.split())) for line in lines if line.strip()]
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def test_maildir_quota_counts_as_dovecot_does(gate: Gate, dovecot: Dovecot) -> None:
    dovecot.configure(backend="maildir", limit_bytes=10**9, limit_messages=1000)
    gate.configure("dovecot")
    gate.add("u", Limits(10**9, 1000))
    _deliver_all(dovecot, "u")
    dovecot.recalc("u")
    gate.scan()
    counted = gate.files("u")
    assert counted == gate.counted("u") == _maildirsize_totals(gate, "u")
    quota = dovecot.quota("u")
    assert (-(-counted[0] // 1024), counted[1]) == (quota.kib, quota.messages)  # KiB, rounded up
    info = gate.reading("u").usage.maildirsize
    assert info is not None and info.agrees_with(*counted)


def test_count_quota_counts_virtual_sizes_as_dovecot_does(gate: Gate, dovecot: Dovecot) -> None:
    dovecot.configure(backend="count", limit_bytes=10**9, limit_messages=1000)
    gate.configure("dovecot-count")
    gate.add("u", Limits(10**9, 1000))
    _deliver_all(dovecot, "u")
    dovecot.recalc("u")
    gate.scan()
    counted = gate.counted("u")
    messages, vsize = dovecot.status("u")
    assert counted == (vsize, messages)
    quota = dovecot.quota("u")
    assert (-(-counted[0] // 1024), counted[1]) == (quota.kib, quota.messages)  # KiB, rounded up
    gate.configure("dovecot")  # the physical sizes are less: the count quota would be missed
    gate.scan()
    assert gate.counted("u")[0] < vsize


def test_layout_fs_folders_count_as_dovecot_counts_them(gate: Gate, dovecot: Dovecot) -> None:
    dovecot.configure(backend="count", limit_bytes=10**9, limit_messages=1000, location="maildir:~/Maildir:LAYOUT=fs")
    for size, lines, folder in [(500, 1, "INBOX"), (2000, 30, "Sent"), (777, 3, "Archive/2024"), (900, 2, "a.b")]:
        assert dovecot.deliver("u", message(size, lines), folder)
    maildir = gate.spool / "u" / "Maildir"
    assert (maildir / "Sent" / "new").is_dir() and (maildir / "Archive" / "2024" / "new").is_dir()
    gate.add("u", Limits(10**9, 1000))
    messages, vsize = dovecot.status("u")
    listed = set(dovecot.doveadm("u", "mailbox", "list").split())

    gate.configure("dovecot-count", maildir_layout="fs")
    gate.scan()
    assert gate.counted("u") == (vsize, messages)
    assert {f.name for f in gate.reading("u").usage.folders} <= listed  # named as Dovecot names them

    gate.configure("dovecot-count")  # read as Maildir++ (the default): unknown, never INBOX only, and why
    gate.scan()
    (unknown,) = gate.store.readings().values()
    assert not unknown.usage.known and "maildir_layout" in str(unknown.reason)


@pytest.mark.parametrize("backend", ["maildir", "count"])
def test_check_agrees_with_dovecot_lda_at_the_boundary(gate: Gate, dovecot: Dovecot, backend: str) -> None:
    limits = Limits(LIMIT, 0)
    dovecot.configure(backend=backend, limit_bytes=LIMIT)
    gate.configure(PROFILE[backend])
    cases = around(LIMIT, GRACE, 6000) + at_and_past(LIMIT, past=GRACE // 2)
    assert disagreements(gate, cases, limits, dovecot.deliver, virtual=backend == "count") == []


@pytest.mark.parametrize("backend", ["maildir", "count"])
def test_check_agrees_with_dovecot_lda_on_the_message_limit(gate: Gate, dovecot: Dovecot, backend: str) -> None:
    limits = Limits(10**9, 10)
    dovecot.configure(backend=backend, limit_bytes=10**9, limit_messages=10)
    gate.configure(PROFILE[backend])
    assert disagreements(gate, counting(10), limits, dovecot.deliver) == []


def test_with_optional_rules_dovecot_enforces_the_files_limit_which_a_fix_keeps(gate: Gate, dovecot: Dovecot) -> None:
    # "?" rules: the limit in maildirsize wins over the one configured (no grace, to see it exactly)
    dovecot.configure(backend="maildir", limit_bytes=LIMIT, rule="?", extra="  quota_grace = 0\n")
    assert dovecot.deliver("u", message(3000))
    maildirsize = gate.spool / "u" / "Maildir" / "maildirsize"
    maildirsize.write_text(f"{LIMIT}S\n100 1\n")  # stale: the files hold 3000
    gate.configure("dovecot", grace="0")
    gate.add("u", Limits(5000, 0))

    gate.scan("--fix-maildirsize")
    assert maildirsize.read_text().splitlines() == [f"{LIMIT}S", "3000 1"]
    assert dovecot.deliver("u", message(2001))  # the file's limit, not quotagate's, is enforced

    gate.scan("--fix-maildirsize", "--set-limit")
    assert maildirsize.read_text().splitlines() == ["5000S", "5001 2"]
    assert (gate.accepts("u", 1), dovecot.deliver("u", message(300))) == (False, False)


# Files whose S= contradicts them: Dovecot's count quota reads them, finds its cached size wrong
# and fails ("Cached message size smaller than expected"): there is no count to compare with.
BROKEN_FOR_COUNT = {"x,S=:2,S", "x:2,S=300", "l,S=30:2,S"}


ODD_CASES = [
    pytest.param(backend, *odd.values, id=f"{backend}-{odd.id}")
    for backend in ("maildir", "count")
    for odd in ODD
    if not (backend == "count" and odd.values[1] in BROKEN_FOR_COUNT)
]


@pytest.mark.parametrize(("backend", "kind", "name"), ODD_CASES)
def test_odd_entries_count_as_dovecot_recounts_them(
    gate: Gate, dovecot: Dovecot, backend: str, kind: str, name: str
) -> None:
    dovecot.configure(backend=backend, limit_bytes=10**9, limit_messages=1000)
    lay(dovecot.home("u") / "Maildir", kind, name)
    gate.configure(PROFILE[backend])
    gate.add("u", Limits(10**9, 1000))
    gate.scan()
    dovecot.recalc("u")
    bytes_, messages = gate.files("u")
    if backend == "maildir":
        theirs = _maildirsize_totals(gate, "u")
        assert (bytes_ + followed(kind, ",S=" in name), messages) == theirs
    else:
        count, vsize = dovecot.status("u")
        assert (bytes_ + followed(kind, ",W=" in name, virtual=True), messages) == (vsize, count)


@pytest.mark.parametrize("kind", ["sdbox", "mdbox"])
def test_a_dbox_mailbox_is_unknown_not_empty(gate: Gate, dovecot: Dovecot, kind: str) -> None:
    """Mail Dovecot's LDA stored as dbox, which quotagate cannot read: unknown (the daemon says
    DUNNO, a full one stays refused), never an empty mbox home that lets mail in."""
    dovecot.configure(backend="count", limit_bytes=LIMIT, location=f"{kind}:~/mail")
    gate.configure("dovecot", layout="{local}/mail")
    address = gate.add("u", Limits(LIMIT))
    assert dovecot.deliver("u", message(3000, 5))
    gate.run("scan", "--full")
    usage = gate.store.readings()[address].usage
    assert not usage.known and "dbox" in (usage.error or ""), usage


@pytest.mark.parametrize("backend", ["count", "maildir"])
def test_layout_index_is_unknown_not_empty(gate: Gate, dovecot: Dovecot, backend: str) -> None:
    """``mail_location = maildir:~/Maildir:LAYOUT=index`` keeps every mailbox, INBOX too, in a
    directory named by its GUID: no cur/ or new/ at the root. Read as an mbox home (or, with
    Dovecot's maildirsize at the root, as a Maildir) it counted 0 while Dovecot refused more."""
    dovecot.configure(
        backend=backend, limit_bytes=LIMIT, location="maildir:~/Maildir:LAYOUT=index", extra="  quota_grace = 0\n"
    )
    for size, folder in [(4000, "INBOX"), (3000, "Sent"), (2500, "Archive")]:
        assert dovecot.deliver("u", message(size, 3), folder)
    assert not dovecot.deliver("u", message(1000, 3))  # 9500 held: Dovecot refuses 1000 more

    gate.configure(PROFILE[backend])
    address = gate.add("u", Limits(LIMIT))
    gate.run("scan", "--full")
    reading = gate.store.readings()[address]
    assert not reading.usage.known and "LAYOUT=index" in (reading.usage.error or ""), reading
    assert gate.run("check", address, "--size", "1000") != ACCEPT, gate.output


def test_a_maildirsize_claiming_more_than_the_files_counts_as_dovecot_enforces_it(gate: Gate, dovecot: Dovecot) -> None:
    """Mail expunged by an IMAP service without the quota plugin (here doveadm with no
    mail_plugins) leaves maildirsize claiming it: Dovecot goes by the claims while they are under
    the limit (maildirsize_parse) and refuses what the files have room for. Counting the files,
    quotagate let that message in, to bounce late."""
    dovecot.configure(backend="maildir", limit_bytes=LIMIT)
    assert dovecot.deliver("u", message(4000, 3))
    assert dovecot.deliver("u", message(4000, 3))
    dovecot.doveadm("u", "-o", "mail_plugins=", "expunge", "mailbox", "INBOX", "uid", "1")
    gate.configure("dovecot")
    gate.add("u", Limits(LIMIT))
    gate.scan()
    assert gate.counted("u") == (8000, 2)  # the claims, not the files' 4000 bytes, 1 message
    assert gate.run("report", "--format", "json") == 0
    assert "counted as claimed" in gate.output
    assert (gate.accepts("u", 5000), dovecot.deliver("u", message(5000, 3))) == (False, False)

    # Rewritten from the files (by quotagate, or Dovecot's own recount): both let it in.
    gate.scan("--fix-maildirsize")
    assert gate.counted("u") == (4000, 1)
    assert (gate.accepts("u", 5000), dovecot.deliver("u", message(5000, 3))) == (True, True)


def test_a_maildirsize_claiming_more_than_the_limit_is_recounted_as_dovecot_does(gate: Gate, dovecot: Dovecot) -> None:
    """Claims over the limit are not believed by Dovecot either: it counts the files again."""
    dovecot.configure(backend="maildir", limit_bytes=LIMIT)
    assert dovecot.deliver("u", message(4000, 3))
    maildirsize = gate.spool / "u" / "Maildir" / "maildirsize"
    with maildirsize.open("a") as f:  # a stale file claiming more than the limit: two lines and more
        f.write("9000 3\n")
    gate.configure("dovecot")
    gate.add("u", Limits(LIMIT))
    gate.scan()
    assert gate.counted("u") == (4000, 1)
    assert (gate.accepts("u", 5000), dovecot.deliver("u", message(5000, 3))) == (True, True)


def test_quota_vsizes_with_the_maildir_backend_counts_what_maildirsize_records(gate: Gate, dovecot: Dovecot) -> None:
    """``quota = maildir`` with ``quota_vsizes = yes`` adds each delivery to maildirsize by its
    virtual (CRLF) size and judges the next one so: the file's claims decide, a byte a line more
    than the physical S= sizes quotagate's dovecot profile sums."""
    dovecot.configure(backend="maildir", limit_bytes=LIMIT, extra="  quota_vsizes = yes\n  quota_grace = 0\n")
    gate.configure("dovecot", grace="0")
    cases = [Case(f"used 6000 (virtual), message {s}", (6000,), s) for s in (3999, 4000, 4001)]
    assert disagreements(gate, cases, Limits(LIMIT), dovecot.deliver, virtual=True) == []


def test_claims_under_a_stale_limit_line_are_not_what_dovecot_enforces(gate: Gate, dovecot: Dovecot) -> None:
    """The admin raised the mailbox's limit from 10000 to 20000 bytes (in the SQL both Dovecot and
    quotagate read). The maildirsize still carries the old definition line "10000S" and claims
    8000 bytes while the files hold 4000 (a message expunged without the quota plugin). Dovecot's
    maildirsize_parse sees a definition that is not its limit and recounts the files: it takes a
    13000-byte message (4000 + 13000 <= 20000). accounting.enforced never looks at the file's
    definition, counts the 8000 claimed bytes, and quotagate refuses the message Dovecot takes."""
    dovecot.configure(backend="maildir", limit_bytes=10_000, extra="  quota_grace = 0\n")
    assert dovecot.deliver("u", message(4000, 3))
    assert dovecot.deliver("u", message(4000, 3))
    dovecot.doveadm("u", "-o", "mail_plugins=", "expunge", "mailbox", "INBOX", "uid", "1")
    maildirsize = gate.spool / "u" / "Maildir" / "maildirsize"
    assert maildirsize.read_text().startswith("10000S"), maildirsize.read_text()

    dovecot.configure(backend="maildir", limit_bytes=20_000, extra="  quota_grace = 0\n")  # the limit raised
    gate.configure("dovecot", grace="0")
    gate.add("u", Limits(20_000))
    gate.scan()
    assert gate.files("u") == (4000, 1)
    verdicts = (gate.accepts("u", 13_000), dovecot.deliver("u", message(13_000, 3)))
    assert verdicts == (True, True), (verdicts, gate.counted("u"), maildirsize.read_text())
