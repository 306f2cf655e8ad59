"""``report --format html``: one self-contained page, names escaped, opened in headless Chromium
without network (its screenshot kept as a test artifact)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.history import DAY, Sample
from quotagate.model import Limits, Mailbox
from quotagate.store import open_store
from tests.present import present
from tests.servers.install import require_command, unavailable
from tests.spoolgen import add_message, maildir_folder

ARTIFACTS = Path(os.environ.get("QUOTAGATE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
HOSTILE = "<script>alert(1)</script>"


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href") and not (v or "").startswith("#")]


@pytest.fixture
def page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Two domains; grow@example.org fills in about 3 days; full@example.org is over; a folder
    named <script> is the largest of near@other.org; an address with markup is unknown."""
    spool = tmp_path / "spool"

    def box(domain: str, local: str, size: int, folder: str = "INBOX") -> None:
        maildir_folder(spool / domain / local / "Maildir")
        add_message(maildir_folder(spool / domain / local / "Maildir", folder), size)

    box("example.org", "grow", 700_000)
    box("example.org", "full", 2_000_000)
    box("other.org", "near", 900_000, "<script>")
    config = tmp_path / "q.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{spool}"\n')
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    try:
        store.migrate()
        store.upsert_mailboxes(
            [
                Mailbox("grow@example.org", Limits(1_000_000)),
                Mailbox("full@example.org", Limits(1_000_000)),
                Mailbox("near@other.org", Limits(1_000_000)),
                Mailbox(f"{HOSTILE}@other.org", Limits(1_000_000), path="/etc/quotagate-nowhere"),
            ]
        )
        now = time.time()
        store.record_history([Sample("grow@example.org", now - d * DAY, 700_000 - 100_000 * d, 1) for d in range(1, 7)])
    finally:
        store.close()
    assert main(["--config", str(config), "scan"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "report", "--format", "html"]) == 0
    return capsys.readouterr().out


def test_the_page_is_self_contained_and_escaped(page: str) -> None:
    tags = Tags()
    tags.feed(page)
    assert "script" not in tags.tags  # the folder and the address are text, not elements
    assert tags.urls == []  # nothing to fetch
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@other.org" in page
    assert "<td>&lt;script&gt;</td>" in page  # near@other.org's largest folder
    assert tags.tags.count("svg") == 1  # one mailbox forecast to fill within 7 days: grow
    assert "grow@example.org: full in about 3 days" in page
    assert re.search(r'<table id="over">.*full@example\.org', page, re.S)
    assert re.search(r'<table id="unknown">.*&lt;script&gt;.*</table>', page, re.S)
    assert "default-src 'none'" in page


def test_chromium_renders_it_without_network(page: str, tmp_path: Path) -> None:
    chromium = require_command("chromium", "chromium")
    unshare = present(shutil.which("unshare"))
    if unshare is None or os.geteuid() != 0:
        unavailable("no network namespace to run Chromium in (needs root and unshare)")
    html = tmp_path / "report.html"
    html.write_text(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "html-report.png"
    shot.unlink(missing_ok=True)
    # --net: a namespace with only a downed loopback. Nothing on the page may need more.
    base = [unshare, "--net", chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    base += [f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1100"]
    dom = subprocess.run([*base, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 1 and "<path" in dom.stdout  # the chart is in the DOM
    assert 'id="nearest"' in dom.stdout and "&lt;script&gt;" in dom.stdout
    assert "<script" not in dom.stdout.replace("&lt;script", "")
    done = subprocess.run([*base, f"--screenshot={shot}", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


# A Maildir++ folder name a user can create over IMAP or in a shell: an OSC sequence that sets
# the terminal's title, and a right-to-left override that makes "gpj.exe" read "exe.jpg".
TITLE = "\x1b]2;pwned\x07"
RLO = "\u202e"


def test_the_html_report_shows_no_control_character_of_a_folder_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = tmp_path / "spool"
    maildir = spool / "example.org" / "u" / "Maildir"
    maildir_folder(maildir)
    add_message(maildir_folder(maildir, f"big{TITLE}{RLO}gpj.exe"), 900)
    config = tmp_path / "q.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{spool}"\n')
    q = ["--config", str(config)]
    assert main([*q, "mailbox", "add", "u@example.org", "--quota", "1000"]) == 0
    assert main([*q, "scan"]) == 0
    capsys.readouterr()
    main([*q, "report", "--format", "html"])
    page = capsys.readouterr().out
    assert "big" in page  # the folder is the largest, shown
    # Every other output (table, CSV, warning mails, logs) shows such a name escaped
    # (quotagate.text.printable); the page printed to the admin's terminal must too.
    assert re.findall(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", page) == []
