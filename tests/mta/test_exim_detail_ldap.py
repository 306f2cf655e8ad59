"""The LDAP lookup's "is the recipient a mailbox itself" step (80f8576), against real Exim and slapd."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, QUOTA, Site, john_doe_reaches_full_john, make_site, safe
from tests.servers.exim import Exim
from tests.servers.slapd import Slapd

pytestmark = [pytest.mark.mta, pytest.mark.servers]


def _ldap_site(
    request: pytest.FixtureRequest, work: Path, exim: Exim, mailboxes: dict[str, str]
) -> tuple[Site, Slapd, str]:
    slapd: Slapd = request.getfixturevalue("slapd")
    tree = slapd.new_tree()
    site = make_site(work, slapd.toml(tree, work) + '\n[policy]\nfolder_delimiter = "+-"\n')
    for i, (local, _) in enumerate(mailboxes.items()):
        slapd.add_mailbox(tree, f"m{i}", f"{local}@{DOMAIN}", QUOTA)
    for local, size in mailboxes.items():
        site.fill(local, QUOTA + 1 if size == "full" else 10)
    assert site.quotagate("db", "migrate") == 0
    assert site.quotagate("scan") == 0
    return site, slapd, tree


def _configure(site: Site, exim: Exim, method: str, locals_: list[str]) -> None:
    parts = exim_config.parts(load_config(site.config), method, "ldap")  # type: ignore[arg-type]
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{safe(u)}" for u in locals_}
    exim.configure(users=users, main=parts.main, acl=parts.acl, routers=parts.routers, acls=parts.acls)


@pytest.mark.parametrize("method", ["router", "acl"])
def test_ldap_mailbox_added_since_the_last_scan_is_not_refused_for_its_full_base(
    request: pytest.FixtureRequest, work: Path, exim: Exim, method: str
) -> None:
    """john-doe@ is a mailbox (an entry of its own) added after the last scan: it has no
    quotagateOverQuota attribute yet. The daemon finds the mailbox and answers DUNNO (no usage);
    the SQL lookups find its row and answer 'no' (the own schema's LEFT JOIN exists for exactly
    this: "a mailbox not measured yet is one"). The LDAP 'whole' lookup returns only the
    quotagateOverQuota attribute: Exim's ldap lookup fails on an entry without it, so the
    condition falls back to john@ and refuses john-doe@, a mailbox with room."""
    site, slapd, tree = _ldap_site(request, work, exim, {"john": "full"})
    slapd.add_mailbox(tree, "late", f"john-doe@{DOMAIN}", QUOTA)
    site.fill("john-doe", 10)
    _configure(site, exim, method, ["john", "john-doe"])
    john, john_doe = exim.fake_session(f"john@{DOMAIN}", f"john-doe@{DOMAIN}")
    assert john[0] == "5", exim.last_session
    assert site.quotagate("check", f"john-doe@{DOMAIN}") != 1  # the daemon's check does not refuse it
    assert john_doe.startswith("250"), exim.last_session


@pytest.mark.parametrize("method", ["router", "acl"])
def test_ldap_disabled_entry_named_like_a_detail_does_not_open_the_full_base(
    request: pytest.FixtureRequest, work: Path, exim: Exim, method: str
) -> None:
    """[store.ldap] enabled_attribute = "employeeType": john@ is full; john-doe@ is an entry the
    admin created disabled (employeeType: disabled). quotagate's store reads it as a disabled
    mailbox, so the daemon (and `quotagate check`) take john-doe@ for john@'s detail and refuse
    it, as 784b42c does for SQL: the admin's routers pass the disabled entry over and
    local_part_suffix delivers john-doe@ to john@ (the users file says so). The LDAP lookup's new
    ldapm step finds any entry with the address, disabled or not (the URL's filter is the
    admin's filter and the address, nothing of enabled_attribute), then asks its flag: none
    (never scanned: disabled) -> 'no', and a remote sender gets past the full john@. Before
    784b42c the lookup asked for quotagateOverQuota, failed on the entry without it and fell back
    to john@: refused."""
    slapd: Slapd = request.getfixturevalue("slapd")
    tree = slapd.new_tree()
    site = make_site(
        work,
        slapd.toml(tree, work) + 'enabled_attribute = "employeeType"\n\n[policy]\nfolder_delimiter = "+-"\n',
    )
    slapd.add_mailbox(tree, "m0", f"john@{DOMAIN}", QUOTA, employeeType="active")
    slapd.add_mailbox(tree, "m1", f"john-doe@{DOMAIN}", QUOTA, employeeType="disabled")
    site.fill("john", QUOTA + 1)
    site.fill("john-doe", 10)
    assert site.quotagate("db", "migrate") == 0
    assert site.quotagate("scan") == 0
    assert site.quotagate("check", f"john-doe@{DOMAIN}") == 1  # the daemon's view: john@'s detail, full
    john_doe_reaches_full_john(site, exim, method, "ldap")
