"""Exim's appendfile delivering INBOX into a Maildir whose folders Dovecot keeps as
``LAYOUT=fs`` (plain sub-directories): appendfile's quota never looks into them."""

from __future__ import annotations

import os

import pytest

from quotagate.model import Limits
from tests.agents.conftest import DOMAIN, Gate
from tests.agents.test_exim import LIMIT, _claims, configure
from tests.servers.exim import MAIL_UID, Exim
from tests.servers.mailuser import message

pytestmark = [pytest.mark.servers, pytest.mark.mta]


def test_layout_fs_folders_count_as_appendfile_counts_them(gate: Gate, exim: Exim) -> None:
    """Scenario: Exim 4.96's appendfile delivers to ``~/Maildir`` (``maildir_use_size_file``,
    ``quota_directory``, ``quota = 10000``); Dovecot serves IMAP with
    ``mail_location = maildir:~/Maildir:LAYOUT=fs``, so the user's folder Sent is the plain
    directory ``~/Maildir/Sent/`` (6,000 bytes in its cur/). appendfile's recount
    (``maildir_compute_size``) descends only into directories matching
    ``maildir_quota_directory_regex`` (default ``^(?:cur|new|\\..*)$``): cur/, new/ and dot
    folders, never ``Sent/``. Exim's maildirsize counts INBOX alone (1,000 bytes), and it
    delivers a further 5,000 bytes.

    Expected: the ``exim`` profile counts what appendfile counts whatever ``[spool]
    maildir_layout`` finds (README: "every entry of cur/ and new/ ... all folders including
    .Trash", as its check_dir_size counts), so ``quotagate check --size 5000`` accepts, as
    appendfile then delivers; or the mailbox is not known. (With ``maildir_layout = "fs"``, the
    layout the IMAP server writes, quotagate counted Sent too, 7,000 bytes, and refused at RCPT
    the message Exim delivers.)"""
    configure(exim, quota_directory=True)
    root = gate.spool / "u" / "Maildir"
    sent = root / "Sent"
    for sub in ("cur", "new", "tmp"):
        (sent / sub).mkdir(parents=True)
    (sent / "cur" / "1700000000.M1P1.host,S=6000:2,S").write_bytes(message(6000))
    for dirpath, dirnames, filenames in os.walk(gate.spool / "u"):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.chown(entry, MAIL_UID, MAIL_UID)
    assert exim.deliver(f"u@{DOMAIN}", message(1000))
    assert _claims(root / "maildirsize") == (1000, 1)  # Exim's count: INBOX alone

    gate.configure("exim", maildir_layout="fs")
    gate.add("u", Limits(LIMIT, 0))
    gate.scan()
    accepted = gate.accepts("u", 5000)
    assert exim.deliver(f"u@{DOMAIN}", message(5000))
    assert accepted, gate.output
