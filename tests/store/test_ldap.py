"""The LDAP store against a real slapd loaded with quotagate's shipped schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.model import Format, Limits, Mailbox, MailboxUsage, Reading, State
from quotagate.store import StoreError, store_for
from quotagate.store.ldap import LdapStore
from tests.servers.slapd import ADMIN_DN, ADMIN_PW, Slapd
from tests.store.backends import store_config


def make_store(slapd: Slapd, tree: str, tmp_path: Path, **ldap: object) -> LdapStore:
    config = store_config(
        {
            "url": slapd.url,
            "state": f"sqlite:///{tmp_path}/state.db",
            "ldap": {"bind_dn": ADMIN_DN, "password": ADMIN_PW, "base": tree, **ldap},
        }
    )
    store = store_for(config)
    assert isinstance(store, LdapStore)
    store.migrate()
    return store


def reading(address: str, bytes_: int, state: State = State.OK) -> Reading:
    return Reading(address, "/m", MailboxUsage(Format.MAILDIR), bytes_, 2, state, 1_700_000_000.0)


def entry(slapd: Slapd, dn: str) -> dict[str, object]:
    conn = slapd.connection()
    try:
        conn.search(dn, "(objectClass=*)", "BASE", attributes=["*", "entryCSN"])
        return dict(conn.entries[0].entry_attributes_as_dict)
    finally:
        conn.unbind()


def test_mailboxes_come_from_the_tree(slapd: Slapd, tmp_path: Path) -> None:
    tree = slapd.new_tree()
    slapd.add_mailbox(tree, "a", "Alice@Example.org", 1000)
    slapd.add_mailbox(tree, "b", "bob@example.org", 0, employeeType="disabled")
    slapd.add_mailbox(tree, "c", "star*(x)@example.org", 5)
    store = make_store(slapd, tree, tmp_path, enabled_attribute="employeeType")
    try:
        boxes = {m.address: m for m in store.mailboxes()}
        assert boxes["alice@example.org"] == Mailbox("alice@example.org", Limits(1000))
        assert not boxes["bob@example.org"].enabled
        assert store.mailbox("star*(x)@example.org") == Mailbox("star*(x)@example.org", Limits(5))
        assert store.mailbox("star*@example.org") is None  # "*" is no wildcard here
        with pytest.raises(StoreError, match="manage mailboxes there"):
            store.upsert_mailboxes([Mailbox("x@example.org")])
    finally:
        store.close()


def test_publishes_only_what_changed(slapd: Slapd, tmp_path: Path) -> None:
    tree = slapd.new_tree()
    a = slapd.add_mailbox(tree, "a", "a@example.org", 1000)
    b = slapd.add_mailbox(tree, "b", "b@example.org", 1000)
    store = make_store(slapd, tree, tmp_path)
    try:
        store.mailboxes()
        store.save_readings(
            [reading("a@example.org", 2000, State.OVER), reading("b@example.org", 10)],
            [],
            {"a@example.org": True, "b@example.org": False},
        )
        assert entry(slapd, a)["quotagateOverQuota"] == [True]
        assert entry(slapd, a)["quotagateUsedBytes"] == [2000]
        assert entry(slapd, b)["quotagateOverQuota"] == [False]
        assert set(store.readings()) == {"a@example.org", "b@example.org"}

        csn = entry(slapd, b)["entryCSN"]
        store.close()
        store = make_store(slapd, tree, tmp_path)
        store.mailboxes()  # a new scan sees what is published
        store.save_readings([reading("b@example.org", 10)], [], {"b@example.org": False})
        assert entry(slapd, b)["entryCSN"] == csn  # same values: the entry was not modified
        store.save_readings([reading("a@example.org", 5)], [], {"a@example.org": False})
        assert entry(slapd, a)["quotagateOverQuota"] == [False]
    finally:
        store.close()


def test_adds_the_auxiliary_class_when_missing(slapd: Slapd, tmp_path: Path) -> None:
    tree = slapd.new_tree()
    dn = f"uid=plain,{tree}"
    conn = slapd.connection()
    conn.add(dn, ["inetOrgPerson"], {"cn": "p", "sn": "p", "mail": "plain@example.org"})  # type: ignore[no-untyped-call]
    conn.unbind()
    store = make_store(slapd, tree, tmp_path)
    try:
        assert store.mailboxes()[0].limits.unlimited
        store.save_readings([reading("plain@example.org", 1)], [], {"plain@example.org": False})
        assert "quotagateMailbox" in entry(slapd, dn)["objectClass"]  # type: ignore[operator]
    finally:
        store.close()


def test_a_wrong_password_is_a_clear_error(slapd: Slapd, tmp_path: Path) -> None:
    store = make_store(slapd, slapd.new_tree(), tmp_path, password="wrong")
    try:
        with pytest.raises(StoreError, match="cannot bind"):
            store.mailboxes()
    finally:
        store.close()
