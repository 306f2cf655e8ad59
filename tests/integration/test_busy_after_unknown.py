"""A mailbox unknown once, for any reason (a timeout on a slow mount), whose folders then keep
taking mail is measured at the next scan: an unknown reading leaves nothing to weigh against,
unless it was unknown for holding less while its folders kept changing (then it carries the
folders it was weighed against). Kept unknown, a busy mailbox was never refused however full."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.model import Limits, State
from quotagate.usage import maildir
from quotagate.usage.mailbox import measure, timed_out
from quotagate.usage.safefs import Roots
from tests.integration.scanenv import DOMAIN, Env
from tests.spoolgen import add_message, maildir_folder


def _deliver_during_each_pass(monkeypatch: pytest.MonkeyPatch, inbox: bytes | Path, size: int) -> None:
    read = maildir.read_folder

    def read_then_deliver(folder_fd: int, name: str, *args: object, **kwargs: object) -> object:
        result = read(folder_fd, name, *args, **kwargs)  # type: ignore[arg-type]
        if name == maildir.INBOX:
            add_message(inbox, size, where="new")  # the MTA delivers meanwhile
        return result

    monkeypatch.setattr(maildir, "read_folder", read_then_deliver)


def test_a_busy_maildir_after_one_timed_out_reading_is_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: alice's last reading timed out (a slow mount for one scan: ``timed_out``, an
    unknown reading)."""
    spool = tmp_path / "spool"
    root = spool / DOMAIN / "alice" / "Maildir"
    inbox = maildir_folder(root)
    add_message(inbox, 1000)
    add_message(maildir_folder(root, "Sent"), 10)
    last = timed_out(str(root), 30)
    _deliver_during_each_pass(monkeypatch, inbox, 100)
    found = measure(str(root), "auto", last, 0, Roots.of(spool), None, "Maildir")
    usage = found.usage
    assert usage.known and usage.all_bytes >= 1010, f"known={usage.known}, {usage.all_bytes} bytes: {usage.error!r}"


def test_a_busy_mailbox_unknown_once_is_never_found_over_quota_while_mail_keeps_coming(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: alice (limit 5,000 bytes) holds 1,000 bytes. One scan cannot measure her (her
    mount hung past mailbox_timeout: the reading is unknown, not kept over since she was not
    over). From then on mail keeps arriving while she is measured: a 1,000-byte message lands
    in INBOX/new during each pass (three passes a scan). After two more scans she holds
    7,000 bytes or more, well past her 5,000.

    Expected: the last scan finds her over quota (refused at RCPT). Actually: every later scan
    finds her unknown ("kept changing"), so the policy daemon answers DUNNO and the exported
    over-quota set never lists her, for as long as deliveries keep coming during the scans."""
    root = env.maildir("alice")
    inbox = maildir_folder(root)
    add_message(inbox, 1000)
    address = env.add("alice", Limits(5_000))
    first = env.scan(full=True, measure_job=lambda job: timed_out(job.root, 1.0)).readings[address]
    assert first.state is State.UNKNOWN
    _deliver_during_each_pass(monkeypatch, inbox, 1000)
    seen = []
    for _ in range(3):
        r = env.scan(full=True).readings[address]
        seen.append((r.state.value, r.bytes, r.usage.error))
    monkeypatch.undo()
    on_disk = sum(p.stat().st_size for d in ("cur", "new") for p in (root / d).iterdir())
    assert seen[-1][0] == "over", f"alice holds {on_disk} bytes of 5,000; scans found: {seen}"
