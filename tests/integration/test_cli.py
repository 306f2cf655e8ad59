"""The CLI contract the README documents, end to end on a real SQLite store and spool."""

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.model import Limits, Mailbox
from quotagate.store import open_store
from tests.spoolgen import add_message, maildir_folder


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    add_message(maildir_folder(spool / "example.org" / "full" / "Maildir"), 2000)
    add_message(maildir_folder(spool / "example.org" / "roomy" / "Maildir"), 100)
    config = tmp_path / "q.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{spool}"\n'
        f'[publish]\nfile = "{tmp_path}/overquota"\n'
    )
    return config


def run(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def test_add_scan_report_check(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(setup, "mailbox", "add", "Full@Example.org", "--quota", "1K") == 0
    assert run(setup, "mailbox", "add", "roomy@example.org", "--quota", "1M", "--messages", "5") == 0
    assert run(setup, "scan") == 0
    out = capsys.readouterr().out
    assert "2 mailboxes" in out and "1 over quota" in out

    assert run(setup, "report", "--format", "json") == 0
    report = {r["address"]: r for r in json.loads(capsys.readouterr().out)}
    assert report["full@example.org"]["state"] == "over"
    assert report["full@example.org"]["bytes"] == 2000
    assert report["roomy@example.org"] == report["roomy@example.org"] | {
        "bytes": 100,
        "messages": 1,
        "quota_bytes": 1024**2,
        "quota_messages": 5,
        "state": "ok",
    }

    assert run(setup, "report", "--over", "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["address"] for r in rows] == ["full@example.org"]

    assert run(setup, "check", "full@example.org") == 1
    assert "reject" in capsys.readouterr().out
    assert run(setup, "check", "roomy@example.org", "--size", "10K") == 0
    assert run(setup, "check", "roomy@example.org", "--size", "2M") == 1
    assert run(setup, "check", "stranger@example.org") == 3
    assert run(setup, "check", "roomy@example.org", "--size", "lots") == 2

    published = (setup.parent / "overquota").read_text()
    assert published.splitlines()[-1] == "full@example.org"


def test_import_is_all_or_nothing(setup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("address,quota\na@example.org,1M\nb@example.org,huge\n")
    assert run(setup, "mailbox", "import", str(bad)) == 2
    assert "bad.csv:3" in capsys.readouterr().err
    assert run(setup, "mailbox", "list") == 0
    assert "a@example.org" not in capsys.readouterr().out


def test_import_refuses_what_no_mailbox_needs(setup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not UTF-8, NUL, control characters: one line each with its number, no traceback, nothing stored."""
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"address,quota,path\na@example.org,1M,a\xff/Maildir\nb@example.org,1M,\n")
    assert run(setup, "mailbox", "import", str(bad)) == 2
    assert capsys.readouterr().err == f"Error: {bad}:2: not UTF-8\n"
    bad.write_bytes(b"address,quota,path\na@example.org,1M,a\x00b\nb@example.org,1M,\x1b[2J\n")
    assert run(setup, "mailbox", "import", str(bad)) == 2
    assert capsys.readouterr().err == f"Error: {bad}:2: control character U+0000\n{bad}:3: control character U+001B\n"
    assert run(setup, "mailbox", "list") == 0
    assert "example.org" not in capsys.readouterr().out


def test_import_accepts_a_utf8_bom(setup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.csv"
    good.write_bytes("\ufeffaddress,quota,path\r\nb@example.org,1M,Bücher/Maildir\r\n".encode())
    assert run(setup, "mailbox", "import", str(good)) == 0
    assert "imported 1 mailboxes" in capsys.readouterr().out
    assert run(setup, "mailbox", "list") == 0
    assert "Bücher/Maildir" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["a@example.org", "--path", "a\0b/Maildir"],
        ["a@example.org", "--path", "a/\x1b[2J"],
        ["a@example.org", "--path", "a\nb"],
        ["a\x9b@example.org"],
    ],
)
def test_add_refuses_control_characters(setup: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert run(setup, "mailbox", "add", *args, "--quota", "1M") == 2
    assert "control character" in capsys.readouterr().err
    assert run(setup, "mailbox", "list") == 0
    assert "example.org" not in capsys.readouterr().out


def test_config_errors_exit_2_and_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "q.toml"
    config.write_text('[spool]\nformat = "mh"\n')
    assert run(config, "scan") == 2
    assert "spool.format" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "none.toml"), "scan"]) == 2
    assert main(["no-such-command"]) == 2


def test_store_url_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "q.toml"
    config.write_text('[store]\nurl = "oracle://x"\n')
    assert run(config, "report") == 2
    assert "unknown scheme" in capsys.readouterr().err
    config.write_text('[store]\nurl = "redis://:pw@127.0.0.1:6379/0"\n')
    assert run(config, "report") == 2
    assert (
        "unknown scheme 'redis' (known: ldap, ldaps, mariadb, mysql, postgresql, sqlite); Redis goes in [shared] url"
        in (capsys.readouterr().err)
    )


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("charset=utf-8", "AttributeError"),  # MySQL spells it utf8mb4
        ("ssl_ca=/etc/mysql/no-such-ca.pem", "FileNotFoundError"),
        ("sslca=/etc/mysql/ca.pem", "unexpected keyword argument 'sslca'"),
    ],
)
def test_options_the_driver_refuses_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], query: str, said: str
) -> None:
    """Scenario: a slip in a MySQL store URL's query string. Expected: one line naming the store
    (password hidden) and what the driver said, exit 2. Before the fix: pymysql's own exception
    (not SQLAlchemy's) went through as a bug: a traceback, exit 1."""
    config = tmp_path / "q.toml"
    config.write_text(f'[store]\nurl = "mysql+pymysql://quotagate:Secret1@127.0.0.1:1/q?{query}"\n')
    assert run(config, "mailbox", "list") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the driver refused the URL's options" in err and said in err, err
    assert "Secret1" not in err


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://quotagate@127.0.0.1:1/q?password=Secret1",  # libpq takes it there too
        "mysql+pymysql://quotagate:abc@Secret1@127.0.0.1:1/q",  # an "@" not written %40
    ],
)
def test_a_store_password_is_never_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str) -> None:
    """Scenario: the store cannot be opened, its password in the query string, or holding an
    "@" as is. Expected: exit 2, and the password nowhere in what is said. Before the fix: the
    query's password was printed in clear, and the part of a password after its "@" too (taken
    for the host, and repeated by the driver)."""
    config = tmp_path / "q.toml"
    config.write_text(f'[store]\nurl = "{url}"\n')
    assert run(config, "mailbox", "list") == 2
    err = capsys.readouterr().err
    assert "Secret1" not in err and "***" in err, err


_LOGS = """
import logging, sys
from quotagate.cli import main
main(sys.argv[1:])
logging.getLogger("quotagate.scan").debug("ours")
logging.getLogger("sqlalchemy.engine").debug("theirs")
"""


@pytest.mark.parametrize(("flags", "shown"), [([], []), (["-v"], ["ours"]), (["-vv"], ["ours", "theirs"])])
def test_each_v_shows_more(tmp_path: Path, flags: list[str], shown: list[str]) -> None:
    """Scenario: an admin adds -v, then -vv. Expected: -v shows quotagate's debug lines, -vv its
    libraries' too. Before the fix: -v was the default level (INFO): it changed nothing."""
    config = tmp_path / "q.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n')
    argv = [sys.executable, "-c", _LOGS, *flags, "--config", str(config), "postfix-config"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert [word for word in ("ours", "theirs") if f"DEBUG: {word}" in done.stderr] == shown, done.stderr


def test_db_migrate_print(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "q.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/fresh.db"\n')
    assert run(config, "db", "migrate", "--print") == 0
    assert "CREATE TABLE quotagate_usage" in capsys.readouterr().out


def test_demo_runs_the_whole_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "over quota" in out
    assert "reject: mailbox is at or over its size limit" in out
    assert "dunno: usage is unknown" in out
    assert "accept: message fits" in out
    assert "reject: message does not fit" in out
    over = (tmp_path / "demo" / "overquota").read_text().splitlines()
    assert "full@example.org" in over and "hoarder@example.org" not in over


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "quotagate"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True, env=os.environ)
    assert "scan" in out.stdout and "check" in out.stdout


def _mailbox(config: Path, address: str) -> Mailbox | None:
    store = open_store(f"sqlite:///{config.parent}/q.db")
    try:
        return store.mailbox(address)
    finally:
        store.close()


def test_add_on_an_existing_mailbox_changes_only_what_it_is_given(
    setup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = "a@example.org"
    assert run(setup, "mailbox", "add", address, "--quota", "1M", "--messages", "5", "--path", "a/M", "--disabled") == 0
    assert run(setup, "mailbox", "add", address, "--quota", "2M") == 0
    assert _mailbox(setup, address) == Mailbox(address, Limits(2 * 1024**2, 5), False, "a/M")
    assert run(setup, "mailbox", "add", address, "--enabled") == 0
    assert _mailbox(setup, address) == Mailbox(address, Limits(2 * 1024**2, 5), True, "a/M")
    assert run(setup, "mailbox", "add", address, "--messages", "0", "--path", "") == 0
    assert _mailbox(setup, address) == Mailbox(address, Limits(2 * 1024**2, 0), True, None)


def test_import_changes_only_the_columns_the_file_has(setup: Path, tmp_path: Path) -> None:
    """Scenario: a mailbox added with its own path, a message limit and --disabled; then a CSV
    of quotas alone (``address,quota``, the minimal header the README gives) is imported.
    Expected: the quota changes and the rest stays, as ``mailbox add`` changes only what it is
    given. (Before, the file reset the rest: the disabled mailbox was enabled again, its message
    limit dropped, and its path too, so the next scan looked for it at the layout's place.)"""
    address = "a@example.org"
    assert run(setup, "mailbox", "add", address, "--quota", "1M", "--messages", "5", "--path", "a/M", "--disabled") == 0
    quotas = tmp_path / "quotas.csv"
    quotas.write_text(f"address,quota\n{address},2M\nnew@example.org,3M\n")
    assert run(setup, "mailbox", "import", str(quotas)) == 0
    assert _mailbox(setup, address) == Mailbox(address, Limits(2 * 1024**2, 5), False, "a/M")
    assert _mailbox(setup, "new@example.org") == Mailbox("new@example.org", Limits(3 * 1024**2))
    everything = tmp_path / "all.csv"
    everything.write_text(f"address,quota,messages,path,enabled\n{address},2M,,,yes\n")
    assert run(setup, "mailbox", "import", str(everything)) == 0
    assert _mailbox(setup, address) == Mailbox(address, Limits(2 * 1024**2))


def test_add_needs_a_quota_for_a_new_mailbox(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(setup, "mailbox", "add", "new@example.org", "--messages", "5") == 2
    assert capsys.readouterr().err == "Error: new@example.org is a new mailbox: give its --quota\n"
    assert _mailbox(setup, "new@example.org") is None


def test_scan_quiet_prints_nothing_on_success_for_cron(setup: Path) -> None:
    """cron mails whatever a job prints: ``-q scan`` prints nothing unless something is wrong."""
    exe = str(Path(sys.executable).parent / "quotagate")
    assert run(setup, "mailbox", "add", "full@example.org", "--quota", "1K") == 0
    quiet = subprocess.run([exe, "-q", "--config", str(setup), "scan"], capture_output=True, text=True, check=False)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    loud = subprocess.run([exe, "--config", str(setup), "scan"], capture_output=True, text=True, check=False)
    assert loud.returncode == 0
    assert loud.stdout.startswith("scan (incremental): 1 mailboxes (")  # the folder may be read again: racy
    assert "1 messages, 2000 bytes, 1 over quota" in loud.stdout


def test_scan_logs_one_line_per_mailbox_going_over_or_back_under(
    setup: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(setup, "mailbox", "add", "full@example.org", "--quota", "1K", "--messages", "10") == 0
    assert run(setup, "mailbox", "add", "roomy@example.org", "--quota", "1M") == 0
    caplog.set_level("INFO", logger="quotagate")
    assert run(setup, "scan") == 0
    assert _transitions(caplog) == [
        "full@example.org is over quota: 2000 of 1024 bytes, 1 of 10 messages",
    ]
    caplog.clear()
    assert run(setup, "scan") == 0
    assert _transitions(caplog) == []  # nothing moved
    assert run(setup, "mailbox", "add", "full@example.org", "--quota", "1M") == 0
    assert run(setup, "mailbox", "add", "roomy@example.org", "--quota", "50") == 0
    assert run(setup, "scan") == 0
    assert _transitions(caplog) == [
        "full@example.org is back under quota: 2000 of 1048576 bytes, 1 of 10 messages",
        "roomy@example.org is over quota: 100 of 50 bytes, 1 of unlimited messages",
    ]
    caplog.clear()
    assert run(setup, "mailbox", "add", "roomy@example.org", "--disabled") == 0
    assert run(setup, "scan") == 0
    assert _transitions(caplog) == ["roomy@example.org is no longer over quota: disabled or gone from the directory"]


def _transitions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "quota:" in r.getMessage()]


def _with_metrics_file(config: Path, metrics: Path) -> None:
    config.write_text(config.read_text() + f'[scan]\nmetrics_file = "{metrics}"\n')


def _samples(metrics: Path) -> dict[str, float]:
    lines = [line for line in metrics.read_text().splitlines() if line and not line.startswith("#")]
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in lines)}


def test_scan_writes_its_metrics_for_the_textfile_collector(setup: Path, tmp_path: Path) -> None:
    metrics = tmp_path / "textfile" / "quotagate.prom"
    metrics.parent.mkdir()
    _with_metrics_file(setup, metrics)
    assert run(setup, "mailbox", "add", "full@example.org", "--quota", "1K") == 0
    before = time.time()
    assert run(setup, "scan") == 0
    samples = _samples(metrics)
    assert set(samples) == {"quotagate_last_scan_success_timestamp_seconds", "quotagate_last_scan_duration_seconds"}
    assert before <= samples["quotagate_last_scan_success_timestamp_seconds"] <= time.time()
    assert 0 <= samples["quotagate_last_scan_duration_seconds"] <= time.time() - before
    assert "# TYPE quotagate_last_scan_success_timestamp_seconds gauge" in metrics.read_text()
    assert [p.name for p in metrics.parent.iterdir()] == ["quotagate.prom"]  # no temp file left

    written = metrics.read_bytes()
    (tmp_path / "spool").rename(tmp_path / "elsewhere")  # the spool vanishes: the scan is refused
    assert run(setup, "scan") == 69
    assert metrics.read_bytes() == written, "a refused scan must not look like a success"


def test_a_metrics_file_that_cannot_be_written_is_logged_and_the_scan_still_counts(
    setup: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = tmp_path / "missing" / "quotagate.prom"
    _with_metrics_file(setup, metrics)
    assert run(setup, "mailbox", "add", "full@example.org", "--quota", "1K") == 0
    assert run(setup, "scan") == 0
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"cannot write scan.metrics_file {metrics}: No such file or directory "
        "(the scan was stored; create the directory, or unset metrics_file)"
    ]


def test_report_and_check_say_which_profile_counted(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trash = setup.parent / "spool" / "example.org" / "roomy" / "Maildir"
    add_message(maildir_folder(trash, "Trash"), 5000)
    text = setup.read_text().replace("[publish]", 'accounting = "courier"\n[publish]')
    setup.write_text(text)
    assert run(setup, "mailbox", "add", "roomy@example.org", "--quota", "1K") == 0
    assert run(setup, "scan") == 0
    capsys.readouterr()

    assert run(setup, "report", "--format", "json") == 0
    row = {r["address"]: r for r in json.loads(capsys.readouterr().out)}["roomy@example.org"]
    assert (row["accounting"], row["bytes"], row["state"]) == ("courier", 100, "ok")  # Trash left out
    assert run(setup, "report", "--format", "csv") == 0
    assert "accounting" in capsys.readouterr().out.splitlines()[0].split(",")

    assert run(setup, "check", "roomy@example.org", "--size", "100") == 0
    assert "counted   as courier (Courier maildrop/deliverquota; full at or over the limit)" in capsys.readouterr().out


_SUPERVISED = """
import sys
import quotagate.policy.workers as workers
class Supervisor:
    def __init__(self, config, count, command):
        print("WORKER:", " ".join(command[3:]))
    def run(self):
        pass
workers.Supervisor = Supervisor
from quotagate.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("flags", "expected"), [(["-v"], "-v"), (["-vv"], "-vv"), (["-q"], "-q")])
def test_workers_get_the_verbosity_serve_was_given(tmp_path: Path, flags: list[str], expected: str) -> None:
    """Scenario: serve -v (-vv, -q) --workers 2. Expected: each worker is started with it. Before
    the fix: -v (quotagate's debug lines, the root logger left at INFO) did not reach the
    workers, which answer every request."""
    config = tmp_path / "q.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[shared]\nurl = "redis://127.0.0.1:1/0"\n')
    argv = [sys.executable, "-c", _SUPERVISED, *flags, "--config", str(config), "serve", "--workers", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WORKER:")), None)
    assert line is not None, (done.stdout, done.stderr)
    assert expected in line.split(), line
