from decimal import Decimal
from pathlib import Path

import pytest

from quotagate.config import Config, ConfigError, load_config, parse_config


def test_every_key_has_a_default() -> None:
    c = parse_config({})
    assert c == Config()
    assert c.store.url.startswith("sqlite:////var/lib/quotagate/")
    assert c.spool.format == "auto"
    assert c.scan.threshold == Decimal(1)
    assert c.publish.file is None


def test_values_are_parsed() -> None:
    c = parse_config(
        {
            "spool": {"root": "/srv/mail", "format": "mbox"},
            "scan": {"threshold": "99%", "workers": 4},
            "folders": [{"match": "Trash", "exclude": True}, {"match": "Junk", "quota": "50M"}],
            "policy": {"grace": "10%"},
        }
    )
    assert c.spool.root == Path("/srv/mail")
    assert c.scan.threshold == Decimal("0.99")
    assert c.folders[1].quota == 50 * 1024**2
    assert c.policy.grace is not None and c.policy.grace.of(1000) == 100


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"spool": {"format": "mh"}}, "spool.format"),
        ({"scan": {"threshold": "lots"}}, "scan.threshold"),
        ({"folders": [{"match": "Trash", "quota": "5X"}]}, "folders.0.quota"),
        ({"spool": {"layout": "{domain}/{user}"}}, "spool"),
        ({"spool": {"layout": "{domain}/Maildir"}}, "spool: layout '{domain}/Maildir' names no mailbox"),
        ({"folders": [{"match": "INBOX.Trash", "exclude": True}]}, "folders.0: match 'INBOX.Trash' would match"),
        ({"spool": {"layout": "%d/%n/Maildir"}}, "spool: layout '%d/%n/Maildir': quotagate's placeholders"),
        ({"spool": {"maildir_subdir": "../Maildir"}}, "spool.maildir_subdir"),
        ({"spool": {"maildir_subdir": ".."}}, "spool.maildir_subdir"),
        ({"stor": {"url": "x"}}, "stor"),
        ({"scan": {"workers": -1}}, "scan.workers"),
        ({"policy": {"listen": ["127.0.0.1:10032", "localhost"]}}, "policy.listen.1"),
        ({"policy": {"listen": ["127.0.0.1:99999"]}}, "policy.listen.0"),
        ({"policy": {"metrics": "9762"}}, "policy.metrics"),
        ({"policy": {"metrics": "unix:/run/quotagate/metrics.sock"}}, "policy.metrics"),
        ({"spool": {"maildir_layout": "LAYOUT=fs"}}, "spool.maildir_layout"),
        ({"folders": [{"match": "Trash"}, {"exclude": True}]}, "folders.1.match: required"),
        ({"spool": {"accounting_options": {"trash": True}}}, "spool.accounting_options.trash: not a known key"),
        ({"warn": {"thresholds": ["80%", "most"]}}, "warn.thresholds.1: not a percentage"),
        ({"policy": {"client_hold": True}}, "policy.client_hold"),
        ({"policy": {"socket_mode": "rw-rw----"}}, "policy.socket_mode: 'rw-rw----' is not an octal mode"),
        ({"policy": {"listen": [10032]}}, "policy.listen.0: Expected a string"),
        ({"shared": {"prefix": "quota gate"}}, "shared.prefix"),
        ({"warn": {"smtp": "localhost"}}, "warn.smtp: 'localhost' is not HOST:PORT"),
        ({"warn": {"sender": "a@b, c@d"}}, "warn.sender"),
        ({"spool": {"root": 5}}, "spool.root: Expected a path"),
        ({"store": {"columns": {"table": "mailbox"}}}, "store: columns apply to an admin's schema"),
        ({"store": {"ldap": {"password": "x", "password_file": "/etc/pw"}}}, "store.ldap: set password or"),
        # A bare number of 1 or less was taken as percent: 0.99 meant as 99% flagged every
        # mailbox over 0.99% of its limit, and 0 every mailbox, without a word.
        ({"store": {"schema": "PostfixAdmin"}}, "store.schema: Invalid enum value 'PostfixAdmin' (one of: 'classic',"),
        ({"folders": [{"match": "x"}, {"match": "y", "exclude": "no"}]}, "folders.1.exclude: Expected `bool`"),
        ({"scan": {"threshold": 0.99}}, 'scan.threshold: 0.99 is ambiguous: write a share as a string, "99%"'),
        ({"scan": {"threshold": 0}}, "scan: threshold must be above 0%"),
        ({"warn": {"thresholds": [0.8, 0.9]}}, "warn.thresholds.0: 0.8 is ambiguous"),
        ({"warn": {"thresholds": ["0%"]}}, "warn: thresholds must be above 0%"),
    ],
)
def test_a_bad_value_names_its_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "test.toml")
    assert f"test.toml: {key}" in str(err.value)


def test_the_ldap_timeout_takes_a_fraction_as_every_other_timeout() -> None:
    assert parse_config({"store": {"ldap": {"timeout": 0.5}}}).store.ldap.timeout == 0.5


def test_a_bare_number_above_one_is_a_percentage() -> None:
    config = parse_config({"scan": {"threshold": 99, "max_vanished": 0}, "warn": {"thresholds": [80, 95.5]}})
    assert config.scan.threshold == Decimal("0.99") and config.scan.max_vanished == 0
    assert config.warn.thresholds == [Decimal("0.8"), Decimal("0.955")]


def test_load_config_file_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "q.toml"
    good.write_text('[spool]\nroot = "/m"\n')
    assert load_config(good).spool.root == Path("/m")
    monkeypatch.setenv("QUOTAGATE_CONFIG", str(good))
    assert load_config().spool.root == Path("/m")

    bad = tmp_path / "bad.toml"
    bad.write_text("[spool\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_maildir_layout_defaults_to_maildirpp() -> None:
    assert parse_config({}).spool.maildir_layout == "maildir++"
    assert parse_config({"spool": {"maildir_layout": "fs"}}).spool.maildir_layout == "fs"


def test_accounting_profile_and_its_options() -> None:
    assert parse_config({}).spool.accounting == "files"
    c = parse_config({"spool": {"accounting": "exim", "accounting_options": {"quota_is_inclusive": False}}})
    assert c.spool.accounting == "exim"
    assert not c.spool.accounting_options.quota_is_inclusive


@pytest.mark.parametrize(
    ("spool", "message"),
    [
        ({"accounting": "postfix"}, "spool.accounting"),
        ({"accounting": "courier", "accounting_options": {"quota_is_inclusive": False}}, "takes no option"),
        ({"accounting": "files", "accounting_options": {"trash_quota": True}}, "takes no option"),
        ({"accounting": "exim", "accounting_options": {"quota_size_regex": "("}}, "not a regular expression"),
        ({"accounting": "exim", "accounting_options": {"quota_size_regex": r",S=\d+"}}, "capture group"),
        ({"accounting": "exim", "accounting_options": {"quota_is_inclusve": False}}, "accounting_options"),
    ],
)
def test_bad_accounting_settings_name_the_key(spool: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"spool": spool})


def test_a_two_level_hashed_layout_is_taken() -> None:
    layout = "{domain}/{local[0]}/{local[1]}/{local}/Maildir"  # Dovecot's %1n/%1.1n, Exim's substr_1_1
    assert parse_config({"spool": {"layout": layout}}).spool.layout == layout


@pytest.mark.parametrize("delimiter", ["$", "{", "a", "\\", " ", "@"])
def test_a_folder_delimiter_exim_or_an_address_would_misread_is_refused(delimiter: str) -> None:
    with pytest.raises(ConfigError, match="folder_delimiter"):
        parse_config({"policy": {"folder_delimiter": delimiter}})
