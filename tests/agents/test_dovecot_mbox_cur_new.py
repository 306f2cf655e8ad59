"""Dovecot's mbox folders named as a Maildir's parts: ``Archive/cur/2024.q1``, ``Work/cur/a``
(made empty by ``doveadm mailbox create``, some filled later), ``Archive/cur/2023/jan``. Dovecot
keeps each as an mbox file below a directory named cur/, and counts their mail; read as a
Maildir passed over in the mbox home, they would leave the mailbox known with its INBOX alone.
Judged against real Dovecot: its quota refuses the next message; quotagate counts the three
messages Dovecot counts, or the mailbox is unknown, and ``check`` never lets the message in."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from quotagate.model import Limits
from tests.agents.conftest import ACCEPT, Gate
from tests.servers.dovecot import Dovecot
from tests.servers.mailuser import message, own

pytestmark = [pytest.mark.servers, pytest.mark.mta]


def _named_like_maildir_messages(dovecot: Dovecot, mail: Path) -> None:
    for folder in ("Archive/cur/2024.q1", "Archive/cur/2024.q2"):
        assert dovecot.deliver("u", message(3000, 5), folder)


def _beside_an_empty_one_listed_first(dovecot: Dovecot, mail: Path) -> None:
    for name in "abcdef":
        dovecot.doveadm("u", "mailbox", "create", f"Work/cur/{name}")
    listed = [e.name for e in os.scandir(mail / "Work" / "cur") if e.is_file(follow_symlinks=False)]
    for name in listed[1:3]:  # the first listed stays empty, as a new folder is
        assert dovecot.deliver("u", message(3000, 5), f"Work/cur/{name}")


def _nested_below_cur(dovecot: Dovecot, mail: Path) -> None:
    for folder in ("Archive/cur/2023/jan", "Archive/cur/2024/jan"):
        assert dovecot.deliver("u", message(3000, 5), folder)


@pytest.mark.parametrize("profile", ["files", "dovecot-count"])
@pytest.mark.parametrize(
    "folders", [_named_like_maildir_messages, _beside_an_empty_one_listed_first, _nested_below_cur]
)
def test_mbox_folders_below_a_directory_named_cur_are_counted_or_unknown(
    gate: Gate, dovecot: Dovecot, folders: Callable[[Dovecot, Path], None], profile: str
) -> None:
    dovecot.configure(
        backend="count", limit_bytes=10_000, location="mbox:~/mail:INBOX=~/mail/inbox", extra="  quota_grace = 0\n"
    )
    home = dovecot.reset("u")
    own(home / "mail")
    assert dovecot.deliver("u", message(3000, 5))
    folders(dovecot, home / "mail")
    assert dovecot.status("u")[0] == 3

    gate.configure(profile, layout="{local}/mail", grace="0")
    address = gate.add("u", Limits(10_000))
    gate.run("scan", "--full")
    reading = gate.store.readings()[address]
    accepted = gate.run("check", address, "--size", "1500") == ACCEPT
    assert not dovecot.deliver("u", message(1500, 5))  # Dovecot: no room
    assert not reading.usage.known or reading.messages == 3, reading.usage
    assert not accepted, gate.output
