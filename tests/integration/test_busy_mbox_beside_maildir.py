"""An mbox home whose files only took mail while measured is taken as last read; with a Maildir
beside its files, those files alone are weighed against the last reading's mbox folders (its
Maildir's are counted apart), or the home always held less and was unknown."""

from __future__ import annotations

import pytest

from quotagate.model import Limits, State
from quotagate.usage import mbox
from quotagate.usage.mailbox import beside_mbox
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, maildir_folder, write_mbox


def test_a_busy_mbox_home_with_a_maildir_beside_is_not_unknown(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: zed's home is an mbox home (``inbox`` holding one message) into which a
    migration put a Maildir (``Maildir/``, 6,000 bytes): the scan counts both, as README says
    ("a Maildir beside the mbox files counted before: counted with them"). Then mail keeps
    arriving in the mbox file while it is read: one message appended after each read of it,
    so its stamp never settles over the three passes. Nothing was moved out of sight: the mbox
    file only grew, the Maildir did not change.

    Expected: zed is measured (at least the bytes of the last reading: the mbox file grew),
    as any busy home whose files only took mail."""
    home = env.spool / "example.org" / "zed" / "mail"
    write_mbox(home / "inbox", ["x" * 100 + "\n"])
    zed = env.add("zed", Limits(50_000), path="example.org/zed/mail")
    assert env.scan().readings[zed].usage.known
    add_message(maildir_folder(home / "Maildir"), 6000)
    before = env.scan(full=True).readings[zed]
    assert before.usage.known and beside_mbox(before.usage), before.usage
    assert before.bytes > 6000

    read = mbox.read_file_folder
    inbox = home / "inbox"

    def read_then_deliver(fd: int, name: str, *args: object, **kwargs: object) -> object:
        result = read(fd, name, *args, **kwargs)  # type: ignore[arg-type]
        if name == "inbox":
            with open(inbox, "ab") as f:  # the delivery agent appends meanwhile
                f.write(b"\nFrom sender@example.net Thu Jan  1 00:00:00 2026\nSubject: more\n\n" + b"y" * 50 + b"\n")
        return result

    monkeypatch.setattr(mbox, "read_file_folder", read_then_deliver)
    now = env.scan(full=True).readings[zed]
    monkeypatch.undo()
    assert now.usage.known and now.state is State.OK and now.bytes >= before.bytes, (
        f"zed {now.state.value}, {now.bytes} bytes (last reading {before.bytes}): {now.usage.error!r}"
    )
