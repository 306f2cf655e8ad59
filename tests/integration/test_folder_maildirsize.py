"""Folders that keep a maildirsize of their own (Exim's appendfile without ``quota_directory``).

Exim makes such a folder a quota root of its own: deliveries to it are counted in its file, not
the root's. quotagate counts the files, records what each folder's file claims, and the report
explains why the root's file disagrees; no fix can make the root's right, so none is written.
(tests/agents/test_exim.py shows the same layout written by Exim itself.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quotagate.model import Limits
from quotagate.report import rows
from tests.integration.scanenv import Env
from tests.present import present
from tests.spoolgen import add_message, backdate, maildir_folder


def _exim_layout(root: Path) -> None:
    add_message(maildir_folder(root), 300)
    add_message(maildir_folder(root, "Sub"), 400)
    add_message(maildir_folder(root, "Sub"), 500)
    add_message(maildir_folder(root, "Sent"), 100)
    (root / "maildirsize").write_text("1000S,0C\n400 2\n")
    (root / ".Sub" / "maildirsize").write_text("1000S,0C\n900 2\n")


def test_a_folders_own_maildirsize_is_recorded_and_explains_the_mismatch(env: Env) -> None:
    root = env.maildir("u")
    _exim_layout(root)
    address = env.add("u", Limits(1000, 0))
    r = env.scan().readings[address]
    assert (r.bytes, r.messages) == (1300, 4)  # the files, whatever the maildirsize files claim
    assert {f.name: f.own_maildirsize for f in r.usage.folders} == {"INBOX": None, "Sent": None, "Sub": (900, 2)}
    stored = present(env.store.reading(address))
    assert stored.usage == r.usage  # the folder's claims survive the store

    [row] = rows(env.store.mailboxes(), env.store.readings())
    text = row["maildirsize"]
    assert text.startswith("disagrees: claims 400 bytes, 2 messages; folders with a maildirsize of their own")
    assert "Sub 900 bytes, 2 messages" in text and text.endswith("together they agree with the files")


def test_no_fix_is_written_over_a_per_folder_layout(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    root = env.maildir("u")
    _exim_layout(root)
    address = env.add("u", Limits(1000, 0))
    result = env.scan(fix_maildirsize=True, set_limit=True)
    assert result.maildirsize_fixed == [] and result.maildirsize_mismatches == [address]
    assert (root / "maildirsize").read_text() == "1000S,0C\n400 2\n"
    assert "keep their own" in caplog.text


def test_a_folder_with_maildirfolder_has_no_quota_of_its_own(env: Env) -> None:
    root = env.maildir("u")
    _exim_layout(root)
    (root / ".Sub" / "maildirfolder").write_text("")
    address = env.add("u")
    r = env.scan().readings[address]
    assert r.usage.own_maildirsizes == ()


def test_the_claims_follow_the_folders_file_when_its_mail_is_not_read_again(env: Env) -> None:
    root = env.maildir("u")
    _exim_layout(root)
    backdate(root)
    address = env.add("u")
    env.scan()
    with (root / ".Sub" / "maildirsize").open("a") as f:
        f.write("50 1\n")  # Exim booked a delivery the scan below does not see (moved away meanwhile)
    add_message(maildir_folder(root), 10, where="new")  # the mailbox changed; Sub's mail did not
    result = env.scan()
    assert result.summary.measured == 1
    sub = present(result.readings[address].usage.folder("Sub"))
    assert sub.own_maildirsize == (950, 3) and sub.bytes == 900


def test_the_report_json_shows_a_folder_file_without_one_at_the_root(env: Env) -> None:
    root = env.maildir("u")
    _exim_layout(root)
    (root / "maildirsize").unlink()
    env.add("u")
    env.scan()
    [row] = rows(env.store.mailboxes(), env.store.readings())
    assert json.loads(json.dumps(row["maildirsize"])).startswith("none at the root; folders with a maildirsize")
