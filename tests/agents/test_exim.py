"""quotagate under the ``exim`` profile against Exim 4.96's appendfile (Debian exim4-daemon-heavy).

A private config delivers local submissions at once (``exim -C private.conf -odi``) into
Maildirs, with ``quota`` and ``maildir_use_size_file``, with and without ``quota_directory``;
the maildirsize Exim keeps is its count; and for a message of every size around the boundary,
``quotagate check --size`` says whether appendfile then delivers or defers it over quota.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from quotagate.model import Limits
from tests.agents.boundary import Case, around, at_and_past, counting, disagreements
from tests.agents.conftest import ACCEPT, DOMAIN, Gate
from tests.agents.oddnames import ODD, followed, lay
from tests.servers.exim import MAIL_UID, Exim
from tests.servers.mailuser import message

pytestmark = [pytest.mark.servers, pytest.mark.mta]

LIMIT = 10_000
USERS = ["u", *(f"case{i}" for i in range(20))]


def configure(
    exim: Exim, *, quota_directory: bool, inclusive: bool = True, messages: int = 0, size_regex: str = ""
) -> None:
    quota = f"quota = {LIMIT}\nquota_is_inclusive = {str(inclusive).lower()}\nmaildir_use_size_file\n"
    if size_regex:
        quota += f"quota_size_regex = {size_regex}\n"
    if messages:
        quota += f"quota_filecount = {messages}\n"
    if quota_directory:
        quota += f"quota_directory = {exim.maildirs}/$address_data/Maildir\n"
    exim.configure(
        users={f"{u}@{DOMAIN}": u for u in USERS},
        main="received_header_text =",  # nothing added: a message is stored as submitted
        # Mail for local+sub goes to the folder .Sub, through a transport of its own.
        routers=exim.folder_router("+sub"),
        transport=quota,
        transports=exim.folder_transport(".Sub", quota),
    )


def _claims(maildirsize: Path) -> tuple[int, int]:
    lines = maildirsize.read_text().splitlines()[1:]
    pairs = [tuple(map(int, line.split())) for line in lines if line.strip()]
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def test_counts_as_exims_maildirsize_with_quota_directory(gate: Gate, exim: Exim) -> None:
    configure(exim, quota_directory=True)
    for size, rcpt in [(500, "u"), (1500, "u+sub"), (700, "u"), (2500, "u+sub")]:
        assert exim.deliver(f"{rcpt}@{DOMAIN}", message(size))
    gate.configure("exim")
    gate.add("u", Limits(LIMIT, 0))
    gate.scan()
    root = gate.spool / "u" / "Maildir"
    assert gate.files("u") == gate.counted("u") == _claims(root / "maildirsize") == (5200, 4)
    assert not (root / ".Sub" / "maildirsize").exists()


@pytest.mark.parametrize("quota_directory", [True, False], ids=["quota_directory", "none"])
def test_check_agrees_with_appendfile_at_the_boundary(gate: Gate, exim: Exim, quota_directory: bool) -> None:
    configure(exim, quota_directory=quota_directory, messages=10)
    gate.configure("exim")
    cases = around(LIMIT, 0, 6000) + at_and_past(LIMIT) + counting(10)
    assert disagreements(gate, cases, Limits(LIMIT, 10), lambda u, d: exim.deliver(f"{u}@{DOMAIN}", d)) == []


def test_check_agrees_with_appendfile_when_not_inclusive(gate: Gate, exim: Exim) -> None:
    configure(exim, quota_directory=True, inclusive=False)
    gate.configure("exim", quota_is_inclusive=False)
    cases = around(LIMIT, 0, 6000) + at_and_past(LIMIT, past=1) + [Case("empty, message past the limit", (), LIMIT + 1)]
    assert disagreements(gate, cases, Limits(LIMIT, 0), lambda u, d: exim.deliver(f"{u}@{DOMAIN}", d)) == []


def test_folders_keep_their_own_maildirsize_without_quota_directory(gate: Gate, exim: Exim) -> None:
    configure(exim, quota_directory=False)
    for size, rcpt in [(300, "u"), (400, "u+sub"), (500, "u+sub"), (600, "u")]:
        assert exim.deliver(f"{rcpt}@{DOMAIN}", message(size))
    root = gate.spool / "u" / "Maildir"
    assert (root / ".Sub" / "maildirsize").exists() and not (root / ".Sub" / "maildirfolder").exists()
    assert _claims(root / "maildirsize") == (900, 2)  # what Exim enforces for deliveries to the root
    assert _claims(root / ".Sub" / "maildirsize") == (900, 2)  # ... and, apart, to the folder
    gate.configure("exim")
    gate.add("u", Limits(LIMIT, 0))
    gate.scan()
    assert gate.counted("u") == (1800, 4)
    sub = gate.reading("u").usage.folder("Sub")
    assert sub is not None and sub.own_maildirsize == (900, 2)

    assert gate.run("report", "--format", "json") == 0
    explained = json.loads(gate.output)[0]["maildirsize"]
    assert explained.startswith("disagrees: claims 900 bytes, 2 messages")
    assert "Sub 900 bytes, 2 messages" in explained and "quota_directory" in explained
    assert "together they agree with the files" in explained

    gate.run("check", f"u@{DOMAIN}", "--size", "100")
    assert "from a scan" in gate.output  # the files, not the root's maildirsize
    gate.scan("--fix-maildirsize")  # the root's file cannot be made right in this layout
    assert _claims(root / "maildirsize") == (900, 2)


@pytest.mark.parametrize(("kind", "name"), ODD)
@pytest.mark.parametrize("size_regex", ["", r",S=(\d+)"], ids=["stat", "regex"])
def test_odd_entries_count_as_exim_recounts_them(gate: Gate, exim: Exim, size_regex: str, kind: str, name: str) -> None:
    configure(exim, quota_directory=True, size_regex=size_regex)
    root = gate.spool / "u" / "Maildir"
    lay(root, kind, name)
    assert exim.deliver(f"u@{DOMAIN}", message(500))  # no maildirsize yet: Exim counts the Maildir first
    gate.configure("exim", quota_size_regex=size_regex)
    gate.add("u", Limits(LIMIT, 0))  # Exim's: its maildirsize's line is the mailbox's
    gate.scan()
    bytes_, messages = gate.files("u")
    assert (bytes_ + followed(kind, bool(size_regex) and ",S=" in name), messages) == _claims(root / "maildirsize")
    # Exim's maildirsize has a line for its count and one for the delivery: before it refuses a
    # message, Exim counts again, and so the reading goes by the files (a symlink's target,
    # which quotagate never follows, then left out: a late bounce for a user who makes one).
    assert len((root / "maildirsize").read_text().splitlines()) > 2
    assert gate.counted("u") == (bytes_, messages)


def test_hard_links_share_their_size_as_exim_counts_them(gate: Gate, exim: Exim) -> None:
    configure(exim, quota_directory=True)
    root = gate.spool / "u" / "Maildir"
    lay(root, "file", "1700000000.M2P2.plain:2,S")
    os.link(root / "cur" / "1700000000.M2P2.plain:2,S", root / "cur" / "1700000000.M3P3.linked:2,S")
    assert exim.deliver(f"u@{DOMAIN}", message(500))
    gate.configure("exim")
    gate.add("u", Limits(10**9, 0))
    gate.scan()
    assert gate.files("u") == gate.counted("u") == _claims(root / "maildirsize") == (300 + 50 // 2 * 2 + 500, 4)


MAILSTORE_ROUTER = """\
store:
  driver = accept
  domains = +local_domains
  address_data = ${{lookup{{${{lc:$local_part@$domain}}}}lsearch{{{work}/users}}{{$value}}fail}}
  transport = store_delivery
"""
MAILSTORE_TRANSPORT = """\
store_delivery:
  driver = appendfile
  directory = {spool}/$address_data/store
  mailstore_format
  create_directory
  user = {uid}
  group = {uid}
  mode = 0644
  quota = {limit}
"""


def test_a_mailstore_directory_is_unknown_not_empty(gate: Gate, exim: Exim) -> None:
    """appendfile's ``mailstore_format`` (an ``.env`` and a ``.msg`` file per message, no From
    line) read as an mbox home counted 0 while Exim deferred the mailbox as full."""
    exim.configure(
        users={f"u@{DOMAIN}": "u"},
        main="received_header_text =",
        routers=MAILSTORE_ROUTER.format(work=exim.work),
        transports=MAILSTORE_TRANSPORT.format(spool=gate.spool, uid=MAIL_UID, limit=LIMIT),
    )
    (gate.spool / "u").mkdir()
    os.chown(gate.spool / "u", MAIL_UID, MAIL_UID)
    for _ in range(3):
        assert exim.deliver(f"u@{DOMAIN}", message(3000, 3))
    assert not exim.deliver(f"u@{DOMAIN}", message(1000, 3))  # Exim: full

    gate.configure("exim", layout="{local}/store")
    address = gate.add("u", Limits(LIMIT))
    gate.run("scan", "--full")
    reading = gate.store.readings()[address]
    assert not reading.usage.known and ".env" in (reading.usage.error or ""), reading
    assert gate.run("check", address, "--size", "1000") != ACCEPT, gate.output
