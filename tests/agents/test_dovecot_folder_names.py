"""Folder names as Dovecot shows them, against quotagate's folder rules.

Dovecot 2.3 keeps a folder's name on disk in modified UTF-7 (RFC 3501): the IMAP folder
"Gelöscht" is the directory ``Gel&APY-scht``, "Archiv/Entwürfe" is ``Archiv/Entw&APw-rfe``.
Everything an admin sees and writes uses the decoded name: ``doveadm mailbox list``, and
``quota_rule2 = Gelöscht:ignore`` (matched against the mailbox's vname in
``quota-maildir.c``'s ``maildir_list_next`` via ``quota_root_rule_find``).
"""

from __future__ import annotations

import pytest

from quotagate.model import Limits
from quotagate.usage.names import imap_name
from tests.agents.conftest import Gate
from tests.servers.dovecot import Dovecot
from tests.servers.mailuser import message

pytestmark = [pytest.mark.servers, pytest.mark.mta]


def test_layout_fs_folder_names_and_rules_are_dovecots_names(gate: Gate, dovecot: Dovecot) -> None:
    """Scenario: ``mail_location = maildir:~/Maildir:LAYOUT=fs``, ``quota_rule2 =
    Gelöscht:ignore`` in Dovecot and, as the README tells (LAYOUT=fs folders are "named as
    Dovecot shows it ... folder rules match that name"; the dovecot profile: "leave Trash out
    with a folder rule, as with Dovecot's ignore"), ``[[folders]] match = "Gelöscht", exclude =
    true`` in quotagate. Mail: 500 bytes in INBOX, 2000 in Gelöscht, 700 in Archiv/Entwürfe.

    Dovecot (``doveadm quota recalc``, its maildirsize) counts 1200 bytes, 2 messages, and lists
    the folders as ``Gelöscht`` and ``Archiv/Entwürfe``. Expected: quotagate counts the same and
    names the folders so, decoded (stored as on disk, ``Gel&APY-scht``, they match the rule by
    the name Dovecot shows)."""
    dovecot.configure(
        backend="maildir",
        limit_bytes=10**9,
        limit_messages=1000,
        location="maildir:~/Maildir:LAYOUT=fs",
        extra="  quota_rule2 = Gelöscht:ignore\n",
    )
    assert dovecot.deliver("u", message(500, 3))
    assert dovecot.deliver("u", message(2000, 3), "Gelöscht")
    assert dovecot.deliver("u", message(700, 3), "Archiv/Entwürfe")
    dovecot.recalc("u")
    listed = set(dovecot.doveadm("u", "mailbox", "list").splitlines())
    assert {"Gelöscht", "Archiv/Entwürfe"} <= listed
    lines = (gate.spool / "u" / "Maildir" / "maildirsize").read_text().splitlines()[1:]
    theirs = tuple(map(sum, zip(*(map(int, line.split()) for line in lines), strict=True)))
    assert theirs == (1200, 2)

    gate.configure("dovecot", maildir_layout="fs")
    with gate.config.open("a") as f:
        f.write('[[folders]]\nmatch = "Gelöscht"\nexclude = true\n')
    gate.add("u", Limits(10**9, 1000))
    gate.scan()
    names = {imap_name(f.name) for f in gate.reading("u").usage.folders}
    assert names <= listed, f"folders named {sorted(names - listed)}, Dovecot lists {sorted(listed)}"
    assert gate.files("u") == theirs


@pytest.mark.parametrize("profile", ["dovecot-count", "dovecot"])
def test_layout_fs_folder_whose_name_starts_with_a_dot_is_counted(gate: Gate, dovecot: Dovecot, profile: str) -> None:
    """Scenario: ``mail_location = maildir:~/Maildir:LAYOUT=fs``. An IMAP user creates the
    folder ".stash" (any name is theirs to choose; Dovecot 2.3.19 accepts it and keeps it as the
    directory ``Maildir/.stash``) and files mail there. Dovecot lists it (``doveadm mailbox
    list`` shows ``.stash``) and counts it: ``doveadm mailbox status`` 2 messages, and the quota
    with them. Skipped as a dot entry, the mailbox was "known" with INBOX only, a mailbox
    Dovecot holds full taken for one with room. Expected: the folder counted."""
    dovecot.configure(
        backend="count", limit_bytes=10_000, location="maildir:~/Maildir:LAYOUT=fs", extra="  quota_grace = 0\n"
    )
    assert dovecot.deliver("u", message(3000, 5))
    assert dovecot.deliver("u", message(6000, 5), ".stash")
    assert ".stash" in dovecot.doveadm("u", "mailbox", "list").split()
    assert (gate.spool / "u" / "Maildir" / ".stash" / "new").is_dir()
    messages, vsize = dovecot.status("u")
    assert messages == 2
    assert not dovecot.deliver("u", message(1500, 5))  # Dovecot: no room for 1500 more

    gate.configure(profile, maildir_layout="fs", grace="0")
    address = gate.add("u", Limits(10_000))
    gate.scan()
    reading = gate.store.readings()[address]
    if reading.usage.known:
        assert reading.messages == messages, [(f.name, f.bytes, f.messages) for f in reading.usage.folders]
        if profile == "dovecot-count":
            assert reading.bytes == vsize
    assert not gate.accepts("u", 1500), gate.output
