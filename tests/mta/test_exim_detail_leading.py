"""The Exim lookups' split of a local part against quotagate's (address.without_detail), for a
local part that starts with the delimiter, against real Exim."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, QUOTA, make_site
from tests.servers.exim import Exim

pytestmark = [pytest.mark.mta, pytest.mark.servers]


def test_a_local_part_starting_with_the_delimiter_is_split_as_quotagate_splits_it(work: Path, exim: Exim) -> None:
    """Mailboxes +a@ (full) and +a+b@ (roomy), default delimiter '+'. without_detail() never
    splits at a leading delimiter (cut <= 0: as Postfix's split_addr, and Exim's own
    local_part_suffix = +* would leave an empty local part), so the scan does not mark +a+b@ and
    the daemon accepts it. The generated regex ^(.+?)[+] lets '.+?' swallow the leading '+',
    takes '+a' for the base and refuses the roomy +a+b@ because +a@ is full. ^([^+]+)[+] would
    split as quotagate does."""
    (work / "db").mkdir()
    (work / "db").chmod(0o755)
    site = make_site(work, f'[store]\nurl = "sqlite:///{work}/db/q.db"')
    assert site.quotagate("db", "migrate") == 0
    for local, size in (("+a", QUOTA + 1), ("+a+b", 10)):
        assert site.quotagate("mailbox", "add", f"{local}@{DOMAIN}", "--quota", str(QUOTA)) == 0
        site.fill(local, size)
    assert site.quotagate("scan") == 0
    assert site.quotagate("check", f"+a+b@{DOMAIN}") == 0  # the daemon accepts it

    parts = exim_config.parts(load_config(site.config), "acl", "lsearch")
    users = {f"+a@{DOMAIN}": f"{DOMAIN}/+a", f"+a+b@{DOMAIN}": f"{DOMAIN}/+a+b"}
    exim.configure(users=users, main=parts.main, acl=parts.acl, routers=parts.routers, acls=parts.acls)
    full, roomy = exim.fake_session(f"+a@{DOMAIN}", f"+a+b@{DOMAIN}")
    assert full[0] == "5", exim.last_session
    assert roomy[0] == "2", exim.last_session
