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


def delete(slapd: Slapd, dn: str) -> None:
    conn = slapd.connection()
    try:
        conn.delete(dn)  # type: ignore[no-untyped-call]
    finally:
        conn.unbind()


def test_a_subtree_referred_to_another_server_is_never_scanned_in_part(slapd: Slapd, tmp_path: Path) -> None:
    """Scenario: part of the tree under base is held by another server (a referral entry,
    ``ref: ldap://...``): slapd answers with the entries it holds and a continuation reference.
    Expected: the listing is refused, naming the reference, as one a size limit cuts short: the
    mailboxes behind it are not taken for gone. (Before, the reference was dropped without a
    word: those mailboxes were never measured, and flags set earlier were cleared.)"""
    tree = slapd.new_tree()
    slapd.add_mailbox(tree, "a", "alice@example.org", 1000)
    conn = slapd.connection()
    try:
        referral = {"ou": "branch", "ref": "ldap://127.0.0.1:1/ou=branch,dc=other,dc=org"}
        conn.add(f"ou=branch,{tree}", ["referral", "extensibleObject"], referral)  # type: ignore[no-untyped-call]
    finally:
        conn.unbind()
    store = make_store(slapd, tree, tmp_path)
    try:
        with pytest.raises(StoreError, match=r"refers part of the tree to another server \(ldap://127\.0\.0\.1:1/"):
            store.mailboxes()
    finally:
        store.close()
    # base itself a referral: refused too, never followed (that would bind elsewhere with the
    # account's password); before, ldap3 followed it.
    store = make_store(slapd, f"ou=branch,{tree}", tmp_path)
    try:
        with pytest.raises(StoreError, match=r"base is held by ldap://127\.0\.0\.1:1/"):
            store.mailboxes()
    finally:
        store.close()


def test_an_entry_deleted_since_the_last_listing_stops_no_other_flag(slapd: Slapd, tmp_path: Path) -> None:
    """Scenario: ``quotagate watch`` keeps one store: gone@ and abe@ are flagged; the admin
    deletes gone@'s entry, and the flag is cleared in a batch that flags bob@, after a listing
    that no longer has it; then abe@'s entry is deleted after a listing, and its flag cleared in
    a batch with bob@'s before any listing could tell.
    Expected: bob@'s flag is written both times; nothing to the deleted entries. (Before, the
    store kept every entry it had ever listed and wrote to the deleted one: noSuchObject failed
    the whole batch, and watch, retrying it, published no flag for anyone until restarted.)"""
    tree = slapd.new_tree()
    gone = slapd.add_mailbox(tree, "gone", "gone@example.org", 1000)
    bob = slapd.add_mailbox(tree, "bob", "bob@example.org", 1000)
    abe = slapd.add_mailbox(tree, "abe", "abe@example.org", 1000)
    store = make_store(slapd, tree, tmp_path)
    try:
        store.mailboxes()
        over = {"gone@example.org": True, "abe@example.org": True}
        store.save_readings([reading(a, 2000, State.OVER) for a in over], [], over)
        delete(slapd, gone)
        assert [m.address for m in store.mailboxes()] == ["abe@example.org", "bob@example.org"]
        store.save_readings(
            [reading("bob@example.org", 2000, State.OVER)],
            ["gone@example.org"],
            {
                "gone@example.org": False,
                "bob@example.org": True,
            },
        )
        assert entry(slapd, bob)["quotagateOverQuota"] == [True]
        delete(slapd, abe)  # after the listing: the store still has it (and writes it before bob)
        store.save_readings([], ["abe@example.org"], {"abe@example.org": False, "bob@example.org": False})
        assert entry(slapd, bob)["quotagateOverQuota"] == [False]
    finally:
        store.close()


def test_an_entry_with_several_addresses_is_the_first_ones_mailbox_and_says_so_once(
    slapd: Slapd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario: an entry with two values of ``mail`` (a second address of the same mailbox).
    Expected: the mailbox is the first address's, and a warning names the others once (the
    daemon, reading the tree every refresh, does not repeat it): the daemon answers nothing for
    them. (Before, they were left out without a word.)"""
    tree = slapd.new_tree()
    slapd.add_mailbox(tree, "alice", ["alice@example.org", "a.smith@example.org"], 1000)  # type: ignore[arg-type]
    store = make_store(slapd, tree, tmp_path)
    try:
        with caplog.at_level("WARNING", logger="quotagate.store.ldap"):
            assert [m.address for m in store.mailboxes()] == ["alice@example.org"]
            store.mailboxes()
        (said,) = [r.getMessage() for r in caplog.records]
        assert "mail has 2 values: the mailbox is alice@example.org; the daemon answers nothing for a.smith@" in said
    finally:
        store.close()
