"""Config mistakes a new admin makes, and what quotagate says about them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from quotagate.cli import main
from tests.servers.daemon import QUOTAGATE
from tests.servers.process import free_port


def site(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    (spool / "example.org" / "alice" / "Maildir" / "cur").mkdir(parents=True)
    return spool


def test_a_store_url_with_three_slashes_is_not_a_database_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: the admin writes `url = "sqlite:///var/lib/quotagate/quotagate.db"` (three
    slashes, the usual slip for the README's four) and runs `quotagate mailbox add` and
    `quotagate scan` from root's home, as cron would. systemd starts `quotagate serve` with
    the working directory /, cron in root's home: each would use a database of its own.
    Expected: a config error naming store.url (exit 2), as `exim-config` already says ("SQLite
    file ... must be absolute") and as `[spool] root` is refused when relative; above all, no
    database made under the current directory (the commands succeeded and created
    ./var/lib/quotagate/quotagate.db wherever they were run)."""
    spool = site(tmp_path)
    home = tmp_path / "root-home"
    home.mkdir()
    monkeypatch.chdir(home)
    # The slip, on a path of the test's own: read as absolute, it would still land in tmp_path.
    meant = tmp_path / "db" / "quotagate.db"
    config = tmp_path / "quotagate.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{meant.relative_to("/")}"\n[spool]\nroot = "{spool}"\n')
    added = main(["--config", str(config), "mailbox", "add", "alice@example.org", "--quota", "1M"])
    scanned = main(["--config", str(config), "scan"])
    made = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    err = capsys.readouterr().err
    assert made == [], f"a database of its own under the current directory: {made}"
    assert (added, scanned) == (2, 2), err
    assert "store.url" in err or "absolute" in err, err


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("publish", "file", "quotagate-overquota"),
        ("scan", "lock_file", "scan.lock"),
        ("scan", "metrics_file", "quotagate.prom"),
    ],
)
def test_a_relative_path_the_scan_writes_is_a_config_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    section: str,
    key: str,
    value: str,
) -> None:
    """Scenario: a path the scan writes, given relative (`[publish] file =
    "quotagate-overquota"`, `[scan] lock_file = "scan.lock"`, `metrics_file = "quotagate.prom"`).
    The timer runs in /, cron and the admin in their own directories: the published file Exim
    reads is not where the scans write it, and two scans from two directories take two locks
    and overlap.
    Expected: exit 2 with one line naming the key (spool roots get exactly that: "spool roots
    must be absolute paths"; `exim-config` refuses a relative [publish] file too), nothing
    written in the current directory (the scan exited 0 and wrote the file there)."""
    spool = site(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = tmp_path / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{spool}"\n[{section}]\n{key} = "{value}"\n'
    )
    code = main(["--config", str(config), "scan"])
    err = capsys.readouterr().err
    assert (code, sorted(p.name for p in cwd.iterdir())) == (2, []), err
    assert f"{section}.{key}" in err, err


def test_serve_with_a_missing_ldap_password_file_stops_at_start(tmp_path: Path) -> None:
    """Scenario: an LDAP store with `[store.ldap] password_file = "/etc/quotagate/ldap.secret"`
    (the README's example), a file the admin has not written yet (or misspelt).
    Expected: as `quotagate scan` does ("quotagate: store.ldap.password_file: No such file or
    directory", exit 2), and as serve does for a missing `[store.ldap] base`, serve stops at start
    with that one line and exit 2: a config mistake, not an outage (serve started, said
    "serving no mailboxes yet (store down)", answered DUNNO to every recipient and logged the
    error every refresh_seconds, for ever)."""
    spool = site(tmp_path)
    config = tmp_path / "quotagate.toml"
    config.write_text(
        '[store]\nurl = "ldap://127.0.0.1:1"\n'
        f'[store.ldap]\nbase = "ou=people,dc=example,dc=org"\npassword_file = "{tmp_path}/ldap.secret"\n'
        f'[spool]\nroot = "{spool}"\n[scan]\nlock_file = "{tmp_path}/scan.lock"\n'
        f'[policy]\nlisten = ["127.0.0.1:{free_port()}"]\nmetrics = ""\ncontrol_socket = "{tmp_path}/control.sock"\n'
    )
    scan = subprocess.run([QUOTAGATE, "--config", str(config), "scan"], capture_output=True, text=True, timeout=60)
    assert (scan.returncode, scan.stderr) == (2, "quotagate: store.ldap.password_file: No such file or directory\n")
    serve = subprocess.Popen(
        [QUOTAGATE, "--config", str(config), "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    code: int | None
    try:
        _, err = serve.communicate(timeout=8)
        code = serve.returncode
    except subprocess.TimeoutExpired:
        serve.terminate()
        _, err = serve.communicate(timeout=20)
        code = None
    assert code == 2, f"serve still running after 8 s:\n{err}"
    assert "store.ldap.password_file" in err, err


def test_sqlite_uri_filename_with_absolute_path_is_accepted(tmp_path: Path) -> None:
    """Scenario: store.url is SQLAlchemy's URI-filename form of an absolute SQLite file,
    ``sqlite:///file:/abs/dir/q.db?mode=rwc&uri=true`` (how one passes SQLite open flags such
    as mode=ro/rwc or cache=shared); it worked at 081142c (``mailbox add`` created /abs/dir/q.db).
    Expected: accepted: the file named is absolute (the check of relative files took
    ``file:/abs/...`` for one, and refused every command)."""
    spool = tmp_path / "mail"
    spool.mkdir()
    config = tmp_path / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///file:{tmp_path}/q.db?mode=rwc&uri=true"\n'
        f'[spool]\nroot = "{spool}"\n[scan]\nlock_file = "{tmp_path}/scan.lock"\n'
        f'[policy]\nstate_file = "{tmp_path}/reservations.json"\n'
    )
    assert main(["--config", str(config), "mailbox", "add", "a@example.org", "--quota", "1000"]) == 0
    assert (tmp_path / "q.db").is_file()


def test_the_state_url_of_a_store_that_keeps_none_there_is_not_checked(tmp_path: Path) -> None:
    """Scenario: a PostgreSQL or SQLite store, with a leftover relative [store] state URL from an
    LDAP trial. Expected: not refused: only an LDAP store keeps its state there."""
    spool = tmp_path / "mail"
    spool.mkdir()
    config = tmp_path / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\nstate = "sqlite:///rel/state.db"\n'
        f'[spool]\nroot = "{spool}"\n[scan]\nlock_file = "{tmp_path}/scan.lock"\n'
    )
    assert main(["--config", str(config), "mailbox", "add", "a@example.org", "--quota", "1000"]) == 0
