"""accounting.enforced counts a maildirsize's claims that Dovecot itself never goes by.

Dovecot's quota-maildir.c (maildirsize_read / maildirsize_parse) recalculates from the files,
ignoring the claims, when the file is 5120 bytes or more ("we'll need to recalculate the
quota"), when a total is negative ("corrupted"), and it skips a last line without a newline.
quotagate reads up to 16 x 5120 bytes, sums a last line without a newline, and takes the
max() of each total separately. A mailbox's user (or Dovecot itself, which appends a line per
transaction and only rewrites an oversized file at its next read) leaves such a file; quotagate
publishes the mailbox as over quota at the claims, Exim refuses at RCPT the mail Dovecot would
take, and, since no delivery then reaches Dovecot to make it recount, the flag stays.
quotagate's own daemon (policy/liveusage.py) already refuses to trust a file over 5120 bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quotagate.model import Limits, State
from tests.integration.scanenv import DOMAIN, Env
from tests.spoolgen import add_message, maildir_folder

LIMITS = Limits(10_000, 50)
LINE = "10000S,50C"

CASES = {
    # >= 5120 bytes: Dovecot recounts the files; the claims (10000 bytes) are never used.
    "oversized": LINE + "\n" + "0 0\n" * 1400 + "10000 1\n",
    # a negative byte total is "corrupted" to Dovecot; quotagate still takes the 50 messages.
    "negative-total": LINE + "\n-1 50\n",
    # Dovecot skips a last line without its newline (a write in progress): it claims 100 bytes.
    "unterminated-last-line": LINE + "\n100 1\n9900 0",
}


@pytest.mark.parametrize("content", CASES.values(), ids=CASES.keys())
def test_claims_dovecot_would_recount_do_not_make_a_mailbox_over_quota(tmp_path: Path, content: str) -> None:
    env = Env(tmp_path)
    env.configure(spool={"accounting": "dovecot"}, publish={"file": str(tmp_path / "overquota")})
    root = env.maildir("eve")
    add_message(maildir_folder(root), 100)
    (root / "maildirsize").write_text(content)
    address = env.add("eve", LIMITS)
    try:
        reading = env.scan().readings[address]
    finally:
        env.close()
    published = (tmp_path / "overquota").read_text().splitlines()
    assert os.path.getsize(root / "maildirsize") > 0
    assert (reading.bytes, reading.messages, reading.state) == (100, 1, State.OK), (
        f"counted {reading.bytes} bytes, {reading.messages} messages ({reading.state.value}): claims Dovecot ignores"
    )
    assert f"eve@{DOMAIN}" not in published
