"""The LDAP store behind a slapd with OpenLDAP's default limits, bound as accounts that are not the rootdn.

OpenLDAP answers an account that reaches its size or time limit with a result code, not an
error, and caps a paged search at the same hard limit unless ``size.prtotal`` lifts it; ldap3
raises nothing for either. The store must list the whole directory or refuse: a scan that acted
on part of it would clear the over-quota flags of the mailboxes it never saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.model import Format, MailboxUsage, Reading, State
from quotagate.store import StoreError, open_store, store_for
from quotagate.store.ldap import LdapStore
from tests.servers import slapd as slapd_harness
from tests.servers.slapd import ADMIN_DN, ADMIN_PW, SUFFIX, Slapd, private_slapd
from tests.store.backends import store_config

pytestmark = [pytest.mark.servers]

MAILBOXES = 600  # more than OpenLDAP's default size limit (500)
QUOTAGATE_DN = f"cn=quotagate,{SUFFIX}"  # OpenLDAP's default limits, as the README's example account
PAGED_DN = f"cn=paged,{SUFFIX}"  # default limits, but paged searches may return every entry
SMALL_DN = f"cn=small,{SUFFIX}"  # a size limit of 3 entries
ACCOUNTS = (QUOTAGATE_DN, PAGED_DN, SMALL_DN)


def default_limits_config() -> str:
    """The harness's cn=config with OpenLDAP's default limits put back (the harness lifts them)
    and write access for the accounts above, two of which get limits of their own."""
    writers = " ".join(f'by dn.exact="{dn}" write' for dn in ACCOUNTS)
    config = (
        slapd_harness.CONFIG.replace("olcSizeLimit: unlimited\n", "")
        .replace(
            "olcLimits: * size=unlimited\n",
            f'olcLimits: dn.exact="{PAGED_DN}" size.prtotal=unlimited\nolcLimits: dn.exact="{SMALL_DN}" size=3\n',
        )
        .replace("olcAccess: {{1}}to * by * read\n", f"olcAccess: {{{{1}}}}to * {writers} by * read\n")
    )
    assert "unlimited\n" not in config.replace("size.prtotal=unlimited\n", "") and writers in config
    return config


@pytest.fixture(scope="module")
def limited() -> Iterator[tuple[Slapd, str]]:
    """A private slapd with OpenLDAP's default limits and a tree of :data:`MAILBOXES` mailboxes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(slapd_harness, "CONFIG", default_limits_config())
        with private_slapd() as server:
            conn = server.connection()
            try:
                for dn in ACCOUNTS:
                    conn.add(  # type: ignore[no-untyped-call]  # ldap3 stubs
                        dn, ["simpleSecurityObject", "organizationalRole"], {"userPassword": ADMIN_PW}
                    )
            finally:
                conn.unbind()
            tree = server.new_tree()
            for i in range(MAILBOXES):
                server.add_mailbox(tree, f"u{i}", f"u{i}@example.org", 10_000)
            yield server, tree


def make_store(server: Slapd, tree: str, tmp_path: Path, bind_dn: str) -> LdapStore:
    config = store_config(
        {
            "url": server.url,
            "state": f"sqlite:///{tmp_path}/state.db",
            "ldap": {"bind_dn": bind_dn, "password": ADMIN_PW, "base": tree},
        }
    )
    store = store_for(config)
    assert isinstance(store, LdapStore)
    store.migrate()
    return store


def published(server: Slapd, tree: str) -> list[str]:
    """The DNs under ``tree`` that carry anything quotagate publishes (read as the unlimited rootdn)."""
    conn = server.connection()
    try:
        conn.search(tree, "(|(quotagateOverQuota=*)(quotagateUsedBytes=*)(quotagateMeasuredAt=*))", attributes=["1.1"])
        return [str(e["dn"]) for e in conn.response or [] if e.get("type") == "searchResEntry"]
    finally:
        conn.unbind()


def test_a_directory_larger_than_the_servers_size_limit_is_never_scanned_in_part(
    limited: tuple[Slapd, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: a slapd as Debian sets it up, with OpenLDAP's default size limit (500 entries for
    every account but the rootdn, paged searches included), 600 mailboxes, and quotagate binding
    as `cn=quotagate,dc=example,dc=org` as the README's example does (write access to the
    attributes it publishes). The admin runs `quotagate scan`.
    Expected: the scan refuses with exit 2 and an error saying the server's size limit for that
    account cut the listing short; nothing is published to the tree or saved in the state, and
    listing the mailboxes raises the same StoreError. (Before, the paged search stopped at the
    server's limit without a word, since ldap3 does not raise sizeLimitExceeded: 100 mailboxes
    were silently left out, never measured, their over-quota flags never written or cleared.)"""
    server, tree = limited
    spool = tmp_path / "spool"
    spool.mkdir()
    config = tmp_path / "quotagate.toml"
    config.write_text(
        server.toml(tree, tmp_path).replace(f'bind_dn = "{ADMIN_DN}"', f'bind_dn = "{QUOTAGATE_DN}"')
        + f'[spool]\nroot = "{spool}"\n[scan]\nlock_file = "{tmp_path}/scan.lock"\n'
    )
    assert QUOTAGATE_DN in config.read_text()
    assert main(["--config", str(config), "db", "migrate"]) == 0
    capsys.readouterr()

    code = main(["--config", str(config), "scan"])

    err = capsys.readouterr().err
    assert code == 2, err
    assert "sizeLimitExceeded" in err and f"size limit for {QUOTAGATE_DN}" in err, err
    assert published(server, tree) == []
    with open_store(load_config(config).store) as store:
        assert store.readings() == {}
        assert store.last_scan() is None
        with pytest.raises(StoreError, match="came back incomplete after 500 entries"):
            store.mailboxes()


def test_a_paged_search_lists_past_the_size_limit_where_the_server_allows_it(
    limited: tuple[Slapd, str], tmp_path: Path
) -> None:
    """Scenario: the same 600 mailboxes and default limits, but the account quotagate binds as
    has `size.prtotal=unlimited` (paged searches may return every entry; a plain search still
    stops at 500).
    Expected: every one of the 600 mailboxes is listed, over two pages."""
    server, tree = limited
    store = make_store(server, tree, tmp_path, PAGED_DN)
    try:
        listed = store.mailboxes()
    finally:
        store.close()
    assert len(listed) == MAILBOXES
    assert {m.address for m in listed} == {f"u{i}@example.org" for i in range(MAILBOXES)}


def test_publishing_without_a_complete_listing_writes_nothing(limited: tuple[Slapd, str], tmp_path: Path) -> None:
    """Scenario: quotagate binds as an account whose size limit (3 entries) is lower than the
    directory of 5 mailboxes, and publishes flags without having listed the mailboxes first (as
    the store does after it was reopened): it must search for their entries itself.
    Expected: a StoreError naming the size limit; no flag or usage is written to any entry and
    no reading is saved in the state (before, the 3 entries the server returned were written)."""
    server, _ = limited
    tree = server.new_tree()
    for i in range(5):
        server.add_mailbox(tree, f"s{i}", f"s{i}@example.org", 1000)
    readings = [
        Reading(f"s{i}@example.org", "/m", MailboxUsage(Format.MAILDIR), 2000, 2, State.OVER, 1_700_000_000.0)
        for i in range(5)
    ]
    store = make_store(server, tree, tmp_path, SMALL_DN)
    try:
        with pytest.raises(StoreError, match=f"after 3 entries .*size limit for {SMALL_DN}"):
            store.save_readings(readings, [], {r.address: True for r in readings})
        assert store.readings() == {}
    finally:
        store.close()
    assert published(server, tree) == []
