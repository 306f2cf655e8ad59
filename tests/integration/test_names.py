"""Names are data: hostile folder names, paths and addresses reach no terminal and no log raw.

A mail user names their folders; a directory (PostfixAdmin, LDAP) may hold any mailbox path. The
spool below has folders named with terminal escapes and rich markup, an address with markup, and a
mailbox whose path (as a directory could store it) holds ESC, BEL, CR, a line break that forges a log
record, and markup: such a path is refused, so its usage is unknown and the reason names the path.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.model import Limits, Mailbox
from quotagate.store import open_store
from tests.spoolgen import add_message, maildir_folder

FOLDERS = ["\x1b]0;pwned\x07", "\x1b[2J", "[bold]x", "[red]y", "line\nquotagate: ERROR: forged", "cr\rover", "c1\x9b2J"]
MARKUP = "[bold]x@example.org"
EVIL = "evil@example.org"
EVIL_PATH = "evil\x1b[2J\x07[red]/\rquotagate: ERROR: forged\n[bold]Maildir"
FORBIDDEN = (b"\x1b", b"\x07", b"\r", "\x9b".encode())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    inbox = maildir_folder(spool / "example.org" / "[bold]x" / "Maildir")
    add_message(inbox, 2000)
    for name in FOLDERS:
        add_message(maildir_folder(inbox, name), 100)
    evil = spool / EVIL_PATH
    evil.parent.mkdir(parents=True)
    os.mkfifo(evil)
    config = tmp_path / "q.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{spool}"\n'
        f'[publish]\nfile = "{tmp_path}/overquota"\n'
    )
    assert main(["--config", str(config), "mailbox", "add", MARKUP, "--quota", "1K"]) == 0
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    try:  # as an SQL or LDAP directory could hold it: `mailbox add` refuses such a path
        store.upsert_mailboxes([Mailbox(EVIL, Limits(1024), True, EVIL_PATH)])
    finally:
        store.close()
    return config


def shown(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, bytes]:
    code = main(list(args))
    captured = capsys.readouterr()
    out = (captured.out + captured.err).encode("utf-8", "surrogateescape")
    for byte in FORBIDDEN:
        assert byte not in out, (args, out)
    return code, out


def test_report_check_and_list_show_names_escaped(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ["--config", str(config)]
    assert main([*c, "scan"]) == 0
    capsys.readouterr()

    _, table = shown(capsys, *c, "report")
    assert MARKUP.encode() in table
    assert b"evil\\x1b[2J\\x07[red]/\\x0dquotagate: ERROR:" in table  # rich wraps the long note

    _, raw = shown(capsys, *c, "report", "--format", "json")
    rows = {r["address"]: r for r in json.loads(raw)}
    assert {f["name"] for f in rows[MARKUP]["folders"]} == {"INBOX", *FOLDERS}
    assert EVIL_PATH in rows[EVIL]["reason"]
    assert raw.isascii()

    _, csv_out = shown(capsys, *c, "report", "--format", "csv")
    assert csv_out.count(b"\n") == 3, csv_out  # the header and one line per mailbox
    assert MARKUP.encode() in csv_out and b"\\x1b[2J\\x07[red]" in csv_out

    code, check = shown(capsys, *c, "check", EVIL)
    assert code == 3
    assert b"evil\\x1b[2J\\x07[red]/\\x0dquotagate: ERROR: forged\\x0a[bold]Maildir" in check
    assert not re.search(rb"^quotagate: ERROR: forged", check, re.MULTILINE)
    code, check = shown(capsys, *c, "check", MARKUP)
    assert code == 1
    assert MARKUP.encode() in check

    _, listed = shown(capsys, *c, "mailbox", "list")
    assert MARKUP.encode() in listed and b"evil\\x1b[2J\\x07[red]" in listed


def scan_log(config: Path, stderr_path: Path, journal: bool) -> list[bytes]:
    """Run ``scan`` as its own process, its stderr in a file (the journal's stream, if ``journal``)."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(stderr_path, "wb") as stderr:
        if journal:
            st = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        cmd = [sys.executable, "-m", "quotagate", "--config", str(config), "scan"]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=env, check=True, timeout=60)
    log = stderr_path.read_bytes()
    for byte in FORBIDDEN:
        assert byte not in log, log
    assert b"evil\\x1b[2J\\x07[red]/\\x0dquotagate: ERROR: forged\\x0a[bold]Maildir" in log
    return log.splitlines()


@pytest.mark.parametrize("journal", [False, True], ids=["terminal", "journal"])
def test_log_records_are_one_line_each(config: Path, tmp_path: Path, journal: bool) -> None:
    lines = scan_log(config, tmp_path / "stderr", journal)
    stamp = "" if journal else r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    record = re.compile(rb"^" + stamp.encode() + rb"quotagate: [A-Z]+: ")
    assert lines and all(record.match(line) for line in lines), lines


def test_a_name_in_a_reason_is_escaped_once_and_exact_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: a user plants a symlinked folder ``.\\x1b[31mred`` (never followed); the scan
    measures the mailbox without it and names it in the reason.
    Expected: the CSV shows it escaped once (``.\\x1b[31mred``), as the README promises ("reads
    back exactly"), and JSON, "the exact form", holds the name itself. (Before, the scanner
    escaped it when writing the reason and every output again: ``.\\\\x1b[31mred``, a folder
    literally named with a backslash; JSON held the escaped text.)"""
    spool = tmp_path / "spool"
    maildir = maildir_folder(spool / "example.org" / "full" / "Maildir")
    add_message(maildir, 2000)
    os.symlink("/etc", os.fsencode(maildir) + b"/.\x1b[31mred")
    config = tmp_path / "q.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{spool}"\n')
    assert main(["--config", str(config), "mailbox", "add", "full@example.org", "--quota", "1M"]) == 0
    assert main(["--config", str(config), "scan"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "report", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    (row,) = csv.DictReader(io.StringIO(out))
    assert "\x1b" not in out and row["reason"].endswith(": .\\x1b[31mred"), out
    assert main(["--config", str(config), "report", "--format", "json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["reason"].endswith(": .\x1b[31mred"), entry["reason"]
