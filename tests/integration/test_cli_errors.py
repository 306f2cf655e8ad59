"""Errors an admin can act on: one line on stderr, exit 2, what went wrong and what to do; never a password."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from quotagate.cli import main

PASSWORD = "secret"


def run_with_store(tmp_path: Path, url: str, *args: str, extra: str = "") -> int:
    config = tmp_path / "q.toml"
    config.write_text(f'[store]\nurl = "{url}"\n{extra}')
    return main(["--config", str(config), *(args or ("report",))])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert PASSWORD not in err, err
    return err.rstrip("\n")


def test_an_unreachable_server_is_one_line_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """psycopg's message has a second line ("Is the server running..."): still one line."""
    assert run_with_store(tmp_path, f"postgresql+psycopg://quotagate:{PASSWORD}@127.0.0.1:1/q") == 2
    line = one_line_error(capsys)
    assert line.startswith("quotagate: cannot open store postgresql+psycopg://quotagate:***@127.0.0.1:1/q: "), line
    assert "Connection refused" in line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"oracle://quotagate:{PASSWORD}@db/q",
            "quotagate: store url 'oracle://quotagate:***@db/q': unknown scheme 'oracle' "
            "(known: ldap, ldaps, mariadb, mysql, postgresql, sqlite)",
        ),
        (
            f"postgresql+psycopgg://quotagate:{PASSWORD}@db/q",
            "quotagate: store url 'postgresql+psycopgg://quotagate:***@db/q': unknown driver 'psycopgg': "
            "use 'postgresql+psycopg://quotagate:***@db/q' (pip install 'quotagate[postgres]')",
        ),
        (
            f"mysql://quotagate:{PASSWORD}@db/q",
            "quotagate: store url 'mysql://quotagate:***@db/q' needs the driver MySQLdb, which is not installed: "
            "use 'mysql+pymysql://quotagate:***@db/q' (pip install 'quotagate[mysql]')",
        ),
        (
            f"mariadb://quotagate:{PASSWORD}@db/q",
            "quotagate: store url 'mariadb://quotagate:***@db/q' needs the driver MySQLdb, which is not installed: "
            "use 'mariadb+pymysql://quotagate:***@db/q' (pip install 'quotagate[mysql]')",
        ),
        (
            f"postgresql+psycopg2://quotagate:{PASSWORD}@db/q",
            "quotagate: store url 'postgresql+psycopg2://quotagate:***@db/q' needs the driver psycopg2, which is not "
            "installed: use 'postgresql+psycopg://quotagate:***@db/q' (pip install 'quotagate[postgres]')",
        ),
    ],
)
def test_a_wrong_url_suggests_the_right_one_and_hides_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, expected: str
) -> None:
    assert run_with_store(tmp_path, url) == 2
    assert one_line_error(capsys) == expected


def test_ldap_without_ldap3_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ldap3 is installed for the tests: a None in sys.modules makes importing it fail as when it is not."""
    monkeypatch.setitem(sys.modules, "ldap3", None)
    monkeypatch.delitem(sys.modules, "quotagate.store.ldap", raising=False)
    url = f"ldap://cn=admin:{PASSWORD}@127.0.0.1:1"
    assert run_with_store(tmp_path, url, extra='[store.ldap]\nbase = "dc=example,dc=org"\n') == 2
    assert one_line_error(capsys) == (
        "quotagate: store url 'ldap://cn=admin:***@127.0.0.1:1' needs the driver ldap3, which is not installed: "
        "pip install 'quotagate[ldap]'"
    )


def test_an_unreachable_ldap_server_hides_a_password_in_its_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"ldap://admin:{PASSWORD}@127.0.0.1:1"
    extra = f'state = "sqlite:///{tmp_path}/state.db"\n[store.ldap]\nbase = "dc=example,dc=org"\n'
    assert run_with_store(tmp_path, url, extra=extra) == 2
    line = one_line_error(capsys)
    assert line == (
        "quotagate: cannot bind to ldap://admin:***@127.0.0.1:1 as anonymous: LDAPInvalidServerError "
        "(give ldap://host[:port] only; the account goes in [store.ldap] bind_dn and password)"
    )


@pytest.fixture
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default config path missing, and nothing naming another."""
    default = tmp_path / "etc" / "quotagate.toml"
    monkeypatch.setattr("quotagate.config.DEFAULT_PATH", default)
    monkeypatch.delenv("QUOTAGATE_CONFIG", raising=False)
    return default


def test_no_config_file_warns_naming_the_searched_paths(
    no_config_file: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["exim-config"]) == 0  # needs a config, not a store
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"no config file: {no_config_file} does not exist, and neither --config nor $QUOTAGATE_CONFIG names "
        "one: running with the defaults (store sqlite:////var/lib/quotagate/quotagate.db, spool /var/mail/vhosts)"
    ]


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["scan", "--help"]])
def test_help_and_version_need_no_config_file(
    no_config_file: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main(args) == 0
    assert capsys.readouterr().err == ""
    assert not caplog.records


def test_demo_needs_no_config_file(
    no_config_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--dir", str(tmp_path / "demo")]) == 0
    assert not [r for r in caplog.records if r.name == "quotagate.config"]


@pytest.mark.parametrize("command", ["scan", "watch", "report"])
def test_scan_and_watch_stop_at_start_on_a_missing_driver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    lock = f'[scan]\nlock_file = "{tmp_path}/scan.lock"\n'  # not /run/quotagate's
    assert run_with_store(tmp_path, f"mysql://quotagate:{PASSWORD}@127.0.0.1:1/q", command, extra=lock) == 2
    assert one_line_error(capsys) == (
        "quotagate: store url 'mysql://quotagate:***@127.0.0.1:1/q' needs the driver MySQLdb, which is not "
        "installed: use 'mysql+pymysql://quotagate:***@127.0.0.1:1/q' (pip install 'quotagate[mysql]')"
    )
