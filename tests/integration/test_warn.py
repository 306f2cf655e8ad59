"""``quotagate warn`` end to end: a real SQLite store, a real spool, a real SMTP server on loopback."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.history import DAY, Sample
from quotagate.mailer import MailError, mailable, message
from quotagate.model import Limits, Mailbox
from quotagate.store import open_store
from quotagate.warnjob import run_warn
from tests.integration.conftest import NOBODY
from tests.servers.smtp import Received, Sink, smtp_sink
from tests.spoolgen import add_message, maildir_folder


@pytest.fixture
def sink() -> Iterator[Sink]:
    with smtp_sink() as server:
        yield server


class Setup:
    def __init__(self, tmp_path: Path, sink: Sink) -> None:
        self.spool = tmp_path / "spool"
        self.db = f"sqlite:///{tmp_path}/q.db"
        self.config = tmp_path / "q.toml"
        self.sink = sink
        self.write_config(sink.address)

    def write_config(self, smtp: str) -> None:
        self.config.write_text(
            f'[store]\nurl = "{self.db}"\n[spool]\nroot = "{self.spool}"\n'
            f'[warn]\nsmtp = "{smtp}"\nsender = "quota@example.org"\n'
        )

    def maildir(self, local: str, folder: str = "INBOX") -> bytes:
        return maildir_folder(self.spool / "example.org" / local / "Maildir", folder)

    def run(self, *args: str) -> int:
        return main(["--config", str(self.config), *args])

    def box(self, local: str, quota: int, *sizes: int) -> list[bytes]:
        assert self.run("mailbox", "add", f"{local}@example.org", "--quota", str(quota)) == 0
        return [add_message(self.maildir(local), size) for size in sizes]

    def scan_and_warn(self, *args: str) -> list[tuple[str, str]]:
        assert self.run("scan") == 0
        assert self.run("warn", *args) == 0
        return [(r.recipients[0], r.message["X-Quotagate-Warning"]) for r in self.sink.take()]


@pytest.fixture
def setup(tmp_path: Path, sink: Sink) -> Setup:
    return Setup(tmp_path, sink)


def test_one_mail_per_crossing_never_repeated(setup: Setup) -> None:
    files = setup.box("a", 1000, 850)
    setup.box("calm", 1000, 100)
    assert setup.scan_and_warn() == [("a@example.org", "80%")]
    assert setup.scan_and_warn() == []  # a second run (a restart, another host) sends nothing
    files += [add_message(setup.maildir("a"), 110)]
    assert setup.scan_and_warn() == [("a@example.org", "95%")]  # 96%: past 90% and 95%, one mail
    os.unlink(files.pop())
    os.unlink(files.pop())
    assert setup.scan_and_warn() == []  # 0%: re-armed, nothing to say
    add_message(setup.maildir("a"), 790)
    assert setup.scan_and_warn() == []  # 79%: below again
    add_message(setup.maildir("a"), 20)
    assert setup.scan_and_warn() == [("a@example.org", "80%")]  # re-armed: the next crossing warns


def test_hysteresis_keeps_a_hovering_mailbox_quiet(setup: Setup) -> None:
    files = setup.box("a", 1000, 800)
    assert setup.scan_and_warn() == [("a@example.org", "80%")]
    os.unlink(files[0])
    add_message(setup.maildir("a"), 760)  # 76%: less than 5 points below
    assert setup.scan_and_warn() == []
    os.unlink(
        setup.spool / "example.org" / "a" / "Maildir" / "cur" / os.listdir(setup.maildir("a") + b"/cur")[0].decode()
    )
    add_message(setup.maildir("a"), 800)
    assert setup.scan_and_warn() == []  # back at 80% without ever dropping to 75%: no second mail


def test_a_recalculation_and_a_full_mailbox_warn_too(setup: Setup) -> None:
    """No delivery: the limit is lowered, the scan recalculates, the mailbox is full."""
    setup.box("b", 1000, 500)
    assert setup.scan_and_warn() == []
    assert setup.run("mailbox", "add", "b@example.org", "--quota", "520") == 0
    assert setup.scan_and_warn() == [("b@example.org", "95%")]
    assert setup.run("mailbox", "add", "b@example.org", "--quota", "400") == 0
    setup.box("c", 300, 400)  # over quota from the start
    assert setup.run("scan") == 0
    assert setup.run("check", "c@example.org") == 1  # refused at RCPT ...
    assert setup.run("warn") == 0
    got = setup.sink.take()
    assert [(r.recipients, r.message["X-Quotagate-Warning"]) for r in got] == [(["c@example.org"], "95%")]
    assert "It is full" in got[0].message.get_content()  # ... yet warned, by the bypass in the README


def test_the_forecast_warns_before_the_thresholds(setup: Setup) -> None:
    setup.box("grow", 1000, 500)
    assert setup.scan_and_warn() == []
    store = open_store(setup.db)
    try:
        now = time.time()
        store.record_history([Sample("grow@example.org", now - d * DAY, 500 - 100 * d, 1) for d in range(1, 5)])
    finally:
        store.close()
    assert setup.run("warn") == 0
    got = setup.sink.take()
    assert [r.message["X-Quotagate-Warning"] for r in got] == ["filling"]
    assert got[0].message["Subject"] == "Your mailbox grow@example.org will be full in about 5 days"
    assert "it will be full in about 5 days" in " ".join(got[0].message.get_content().split())
    assert setup.scan_and_warn() == []


def test_each_run_leaves_the_outlook_for_prometheus(setup: Setup, tmp_path: Path) -> None:
    metrics = tmp_path / "warn.prom"
    setup.config.write_text(setup.config.read_text() + f'metrics_file = "{metrics}"\n')
    setup.box("grow", 1000, 500)
    setup.box("over", 1000, 1010)
    setup.box("calm", 1000, 10)
    with open_store(setup.db) as store:
        now = time.time()
        store.record_history([Sample("grow@example.org", now - d * DAY, 500 - 100 * d, 1) for d in range(1, 5)])
    assert setup.run("scan") == 0
    assert setup.run("warn", "--dry-run") == 0
    assert not metrics.exists()  # a dry run leaves monitoring as it was
    assert setup.run("warn") == 0
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    above = {s.labels["threshold"]: s.value for s in families["quotagate_mailboxes_above"].samples}
    assert above == {"80%": 1, "90%": 1, "95%": 1}
    full = {s.labels["within_days"]: s.value for s in families["quotagate_mailboxes_forecast_full"].samples}
    assert full == {"1": 1, "7": 2, "30": 2}  # "over" is full already, "grow" in about 5 days
    assert families["quotagate_mailboxes_measured"].samples[0].value == 3
    assert families["quotagate_last_warn_success_timestamp_seconds"].samples[0].value >= now


def test_dry_run_sends_and_records_nothing(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    setup.box("a", 1000, 900)
    assert setup.scan_and_warn("--dry-run") == []
    assert "a@example.org: 90%: would send" in capsys.readouterr().out
    assert setup.scan_and_warn() == [("a@example.org", "90%")]


def test_a_template_dir_that_is_not_there_is_an_error_not_the_builtin_texts(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: [warn] template_dir names a directory that is not there (misspelt, never
    deployed on this host); a warning is due.
    Expected: exit 2 and one line naming the key, nothing sent, even with --dry-run. (Before,
    the built-in English texts went out to every user instead of the site's own, without a word.)"""
    setup.box("a", 1000, 900)
    with setup.config.open("a") as config:
        config.write(f'template_dir = "{tmp_path}/no-such-templates"\n')
    assert setup.run("scan") == 0
    capsys.readouterr()
    for args in (["--dry-run"], []):
        assert setup.run("warn", *args) == 2
        err = capsys.readouterr().err
        assert err.startswith("quotagate: warn.template_dir: ") and "is not a directory" in err and err.count("\n") == 1
    assert setup.sink.take() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the symlink must be another user's")
def test_a_users_symlink_to_another_mailbox_tells_them_nothing_of_it(setup: Setup) -> None:
    """Scenario: alice owns her directory and swaps her Maildir for a symlink to bob's, which
    she cannot list (root's, 0700); a scan, then warn.
    Expected: alice's mailbox is unknown (the symlink leads to what she does not own) and she
    gets no warning; bob's gets its own.
    Before the fix: the scan followed the symlink (it stays beneath the spool) and measured
    bob's Maildir as alice's: her warning told her bob's usage and the names and sizes of his
    largest folders."""
    setup.box("alice", 1000, 10)
    setup.box("bob", 1000, 10)
    add_message(setup.maildir("bob", "Secret-Merger-With-ACME"), 950)
    bob = setup.spool / "example.org" / "bob" / "Maildir"
    bob.chmod(0o700)
    home = setup.spool / "example.org" / "alice"
    for entry in sorted(home.rglob("*"), reverse=True):
        entry.rmdir() if entry.is_dir() else entry.unlink()
    os.chown(home, NOBODY, NOBODY)
    (home / "Maildir").symlink_to("../bob/Maildir")
    os.lchown(home / "Maildir", NOBODY, NOBODY)
    mails = setup.scan_and_warn()
    assert [to for to, _ in mails] == ["bob@example.org"]
    with open_store(load_config(setup.config).store) as store:
        reading = store.readings()["alice@example.org"]
    assert reading.state.value == "unknown" and "does not own" in str(reading.usage.error)


def test_a_refused_send_is_tried_again_next_run(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    setup.box("a", 1000, 900)
    assert setup.run("scan") == 0
    setup.write_config(f"127.0.0.1:{setup.sink.port + 1 if setup.sink.port < 65535 else 1}")
    assert setup.run("warn") == 1
    assert "a@example.org: 90%: failed: SMTP" in capsys.readouterr().out
    setup.write_config(setup.sink.address)
    assert setup.scan_and_warn() == [("a@example.org", "90%")]


def test_hostile_names_stay_inert_in_headers(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder named <script> shows as text; an address with CRLF and a Bcc: never becomes a header
    or a recipient (the directory can hold any address: here quotagate's own table)."""
    setup.maildir("x")
    add_message(setup.maildir("x", "<script>alert(1)"), 900)
    evil = "x\r\nBcc: victim@evil.example\r\n@example.org"
    add_message(setup.maildir("evil"), 900)
    store = open_store(setup.db)
    try:
        store.migrate()
        store.upsert_mailboxes(
            [Mailbox("x@example.org", Limits(1000)), Mailbox(evil, Limits(1000), path="example.org/evil/Maildir")]
        )
    finally:
        store.close()
    assert setup.run("scan") == 0
    assert setup.run("warn") == 1  # the evil address is not mailed: one failure, said
    out = capsys.readouterr().out
    assert "x\\x0d\\x0aBcc: victim@evil.example\\x0d\\x0a@example.org: 90%: failed: not a plain address" in out
    got: list[Received] = setup.sink.take()
    assert [r.recipients for r in got] == [["x@example.org"]]
    msg = got[0].message
    assert all("victim" not in str(v) for v in msg.values())
    assert sorted(msg.keys()) == sorted(
        [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "Auto-Submitted",
            "X-Quotagate-Warning",
            "Content-Type",
            "Content-Transfer-Encoding",
            "MIME-Version",
        ]
    )
    assert msg.get_content_type() == "text/plain"
    assert "<script>alert(1)" in msg.get_content()  # text, shown as it is


def test_a_subject_template_cannot_add_headers(setup: Setup, tmp_path: Path) -> None:
    """Even a template that puts a folder name with CRLF into the subject gets one line."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "threshold.txt").write_text("Subject: {{ folders[0][0] }}\n\nbody\n")
    setup.config.write_text(setup.config.read_text() + f'template_dir = "{templates}"\n')
    setup.maildir("y")
    add_message(setup.maildir("y", "a\r\nBcc: victim@evil.example"), 900)
    assert setup.run("mailbox", "add", "y@example.org", "--quota", "1000") == 0
    assert setup.run("scan") == 0
    assert setup.run("warn") == 0
    [got] = setup.sink.take()
    assert got.recipients == ["y@example.org"]
    assert got.message["Bcc"] is None
    assert "victim" in got.message["Subject"] and "\n" not in got.message["Subject"]


# Passes mailer.mailable() (no space, control character, ":" or second "@"), but the email
# package decodes the RFC 2047 encoded word in it: CR LF, "Bcc:" and an "@" come out.
ENCODED_BCC = "a@=?utf-8?q?x=0D=0ABcc=3A_evil=40attacker.com?="
# The same trick in the local part: the email package refuses it with a ValueError.
ENCODED_CRLF = "=?utf-8?q?x=0d=0abcc=3a_evil=40attacker.com?=@example.org"


def test_an_encoded_word_in_an_address_adds_no_header_to_the_warning() -> None:
    try:
        msg = message("quota@example.org", ENCODED_BCC, "Your mailbox is full", "body\n", "95%")
    except MailError:
        return  # not mailed: as the module promises for an address that is not plain
    raw = msg.as_bytes()
    headers = raw.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert not [h for h in headers if h.lower().startswith(b"bcc:")], raw
    assert [a.addr_spec for a in msg["To"].addresses] == [ENCODED_BCC], raw


def test_an_address_the_email_package_refuses_does_not_stop_the_other_warnings(tmp_path: Path, sink: Sink) -> None:
    setup = Setup(tmp_path, sink)
    setup.box(ENCODED_CRLF.partition("@")[0], 1000, 900)
    setup.box("plain", 1000, 900)
    assert setup.run("scan") == 0
    try:
        code = setup.run("warn")
    except ValueError as exc:  # the email package's refusal, let through, ended the whole run
        pytest.fail(f"quotagate warn crashed: {exc!r}")
    got = [(r.recipients, r.message["X-Quotagate-Warning"]) for r in sink.take()]
    assert got == [(["plain@example.org"], "90%")]
    assert code == 1  # the odd one is a failed warning, said so


def test_a_mailbox_that_stopped_growing_is_not_told_it_is_full_now(tmp_path: Path, sink: Sink) -> None:
    """It grew by 100 bytes a day to 800 of 1,000, then nothing changed for ten days (scans ran
    and found it unchanged, writing nothing): anchored at the reading's own time, the forecast
    told its owner at 80% that it "will be full now"."""
    setup = Setup(tmp_path, sink)
    setup.box("u", 1000, 800)
    assert setup.run("scan") == 0
    scanned = time.time()
    store = open_store(setup.db)
    try:
        store.record_history([Sample("u@example.org", scanned - d * DAY, 800 - 100 * d, 1) for d in range(1, 4)])
        ten_days_later = scanned + 10 * DAY
        assert setup.run("scan") == 0  # unchanged: nothing written, as on each of those ten days
        run = run_warn(load_config(setup.config), store, now=ten_days_later)
    finally:
        store.close()
    assert [o.status for o in run.outcomes] and all(o.status == "sent" for o in run.outcomes)
    bodies = [" ".join(r.message.get_content().split()) for r in sink.take()]
    assert bodies and all("80%" in b for b in bodies)
    # 80% full and not grown for ten days: whatever the trend, it is not "full now".
    assert not [b for b in bodies if "full now" in b], bodies


SENDER = "quotagate@example.org"


@pytest.mark.parametrize("address", ["a=?b@example.org", "x=?@example.org", "why=?not@example.org"])
def test_an_address_with_equals_question_mark_in_its_local_part_is_mailed(address: str) -> None:
    assert mailable(address)
    msg = message(SENDER, address, "Your mailbox", "body", "near")
    assert [a.addr_spec for a in msg["To"].addresses] == [address]


def test_an_encoded_word_is_still_refused_by_the_parse_back_alone() -> None:
    """The control (passes now): what the "=?" refusal was for stays refused."""
    with pytest.raises(MailError):
        message(SENDER, "=?utf-8?q?x?=@example.org", "s", "b", "n")
