"""PostfixAdmin's alias domains on the postfixadmin preset in SQLite, as PostfixAdmin's own maps
deliver them: an explicit alias in an alias domain, and Exim's router after the rewrite."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, QUOTA, Site, make_site, safe
from tests.servers import schemas
from tests.servers.exim import Exim


def _site(work: Path, aliases: list[tuple[str, str]]) -> tuple[Site, str]:
    (work / "db").mkdir()
    (work / "db").chmod(0o755)
    url = f"sqlite:///{work}/db/pfa.db"
    schemas.create(url, "postfixadmin")
    schemas.add_alias_domains(url, {"alias.example": DOMAIN}, aliases)
    site = make_site(work, f'[store]\nurl = "{url}"\nschema = "postfixadmin"')
    assert site.quotagate("db", "migrate") == 0
    for local, size in (("full", QUOTA + 1), ("roomy", 10)):
        schemas.add_mailbox(url, "postfixadmin", f"{local}@{DOMAIN}", QUOTA, maildir=f"{DOMAIN}/{local}/Maildir")
        site.fill(local, size)
    assert site.quotagate("scan") == 0
    return site, url


def test_an_explicit_alias_in_an_alias_domain_is_not_taken_for_the_target_mailbox(tmp_path: Path) -> None:
    """PostfixAdmin's Postfix maps list the explicit aliases first (virtual_alias_maps =
    ...alias_maps.cf, ...alias_domain_maps.cf, ...alias_domain_catchall_maps.cf): full@alias.example,
    an alias of its own to roomy@example.org, is delivered to roomy, which has room: not taken
    for full@example.org, it is an alias like any other (DUNNO: each target is checked when mail
    reaches it)."""
    site, _ = _site(
        tmp_path,
        [
            (f"full@{DOMAIN}", f"full@{DOMAIN}"),
            (f"roomy@{DOMAIN}", f"roomy@{DOMAIN}"),
            ("full@alias.example", f"roomy@{DOMAIN}"),
        ],
    )
    assert site.quotagate("check", f"full@{DOMAIN}") == 1  # the full mailbox itself
    assert site.quotagate("check", "full@alias.example") == 3  # an alias (to roomy@): DUNNO, never refused


@pytest.mark.mta
@pytest.mark.servers
def test_the_exim_router_after_the_alias_domain_redirect_sees_the_mailbox(work: Path, exim: Exim) -> None:
    """The Exim lookups ask about the address as Exim has it: placed after the router that
    rewrites an alias domain (as the README says), the check sees the mailbox it reaches."""
    site, _ = _site(work, [(f"full@{DOMAIN}", f"full@{DOMAIN}"), (f"roomy@{DOMAIN}", f"roomy@{DOMAIN}")])
    parts = exim_config.parts(load_config(site.config), "router", "sqlite")
    alias_router = f"alias_domains:\n  driver = redirect\n  domains = alias.example\n  data = $local_part@{DOMAIN}\n"
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{safe(u)}" for u in ("full", "roomy")}
    exim.configure(
        users=users,
        main=parts.main,
        acl=parts.acl,
        routers=alias_router + parts.routers,
        acls=parts.acls,
        domains=f"{DOMAIN} : alias.example",
    )
    full, via_alias, roomy_alias = exim.fake_session(f"full@{DOMAIN}", "full@alias.example", "roomy@alias.example")
    assert full[0] == "5"
    assert roomy_alias.startswith("250"), roomy_alias
    assert via_alias[0] == "5" and "Mailbox is full" in via_alias, via_alias


def test_an_explicit_alias_in_an_alias_domain_keeps_its_detail(tmp_path: Path) -> None:
    """full@alias.example has an alias row of its own, to roomy@example.org. Postfix's virtual
    alias expansion with recipient_delimiter = + looks full+news@alias.example up whole in every
    map (PostfixAdmin's alias_domain map asks for the alias full+news@example.org: none), then
    full@alias.example (the explicit alias: roomy@). The mail goes to roomy@, which has room.
    AliasDomains.target checks `own` with the whole address (full+news@alias.example is not in
    it), so the daemon and check take full+news@example.org, split it to the full full@example.org,
    and refuse: a mailbox with room refused because another is full."""
    site, _ = _site(
        tmp_path,
        [
            (f"full@{DOMAIN}", f"full@{DOMAIN}"),
            (f"roomy@{DOMAIN}", f"roomy@{DOMAIN}"),
            ("full@alias.example", f"roomy@{DOMAIN}"),
        ],
    )
    assert site.quotagate("check", "full@alias.example") == 3  # the fix of 6b9dc33: an alias, DUNNO
    assert site.quotagate("check", "full+news@alias.example") == 3  # the same alias, with a detail


def test_a_disabled_detail_named_mailbox_reached_by_an_alias_domain_is_its_base(tmp_path: Path) -> None:
    """folder_delimiter "+-". full@example.org is over quota; full-doe@example.org is a mailbox the
    admin disabled (mailbox.active = 0, and its alias row with it, as PostfixAdmin does).
    full-doe@example.org sent directly is taken for full@ (784b42c: a disabled one is passed over,
    as PostfixAdmin's maps pass it over and Postfix's recipient_delimiter then delivers it to
    full@): refused. The same mailbox through the alias domain, full-doe@alias.example, is looked
    up whole in PostfixAdmin's alias-domain maps (no active mailbox full-doe@example.org), then as
    full@alias.example -> full@example.org: the same full mailbox. The daemon's _mailbox takes the
    reached full-doe@example.org without asking whether it is enabled, answers for the disabled
    mailbox (DUNNO), and a remote sender gets past the full full@ by writing the alias domain."""
    site, url = _site(tmp_path, [(f"full@{DOMAIN}", f"full@{DOMAIN}"), (f"roomy@{DOMAIN}", f"roomy@{DOMAIN}")])
    schemas.add_mailbox(url, "postfixadmin", f"full-doe@{DOMAIN}", QUOTA, maildir=f"{DOMAIN}/full-doe/Maildir")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE mailbox SET active = 0 WHERE username = :a"), {"a": f"full-doe@{DOMAIN}"})
        conn.execute(
            text("INSERT INTO alias (address, goto, domain, active) VALUES (:a, :a, :d, 0)"),
            {"a": f"full-doe@{DOMAIN}", "d": DOMAIN},
        )
    engine.dispose()
    config = site.config.read_text() + '\n[policy]\nfolder_delimiter = "+-"\n'
    site.config.write_text(config)
    assert site.quotagate("scan") == 0
    assert site.quotagate("check", f"full@{DOMAIN}") == 1
    assert site.quotagate("check", f"full-doe@{DOMAIN}") == 1  # taken for full@, as 784b42c says
    assert site.quotagate("check", "full+news@alias.example") == 1  # a detail through the alias domain
    assert site.quotagate("check", "full-doe@alias.example") == 1  # the same mailbox: DUNNO here
