"""80f8576's "is the recipient a mailbox itself" query counts disabled rows, against real Exim."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.mta.conftest import DOMAIN, QUOTA, john_doe_reaches_full_john, make_site
from tests.servers import schemas
from tests.servers.exim import Exim

pytestmark = [pytest.mark.mta, pytest.mark.servers]


@pytest.mark.parametrize("method", ["router", "acl"])
def test_a_disabled_mailbox_named_like_a_detail_does_not_open_the_full_base(
    work: Path, exim: Exim, method: str
) -> None:
    """Classic schema, folder_delimiter "+-": john@ is full; john-doe@ has a row with enabled = 0
    (the admin closed it). The admin's routers skip disabled rows, so Exim's local_part_suffix
    router delivers john-doe@ to john@ (the users file below says so). Before 80f8576 the lookup
    fell back to john@ and refused; now the 'whole' query finds the disabled row, answers 'no'
    (its flag was cleared when it was disabled), and the mail for the full john@ is accepted.
    The lsearch lookup of the same store still refuses (the published file marks only enabled
    mailboxes): the lookups disagree."""
    (work / "db").mkdir()
    (work / "db").chmod(0o755)
    url = f"sqlite:///{work}/db/q.db"
    schemas.create(url, "classic")
    site = make_site(work, f'[store]\nurl = "{url}"\nschema = "classic"\n\n[policy]\nfolder_delimiter = "+-"')
    assert site.quotagate("db", "migrate") == 0
    schemas.add_mailbox(url, "classic", f"john@{DOMAIN}", QUOTA)
    schemas.add_mailbox(url, "classic", f"john-doe@{DOMAIN}", QUOTA)
    site.fill("john", QUOTA + 1)
    site.fill("john-doe", 10)
    assert site.quotagate("scan") == 0
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE mailbox SET enabled = 0 WHERE username = 'john-doe'"))
    engine.dispose()
    assert site.quotagate("scan") == 0  # the disabled mailbox's flag is cleared
    john_doe_reaches_full_john(site, exim, method, "sqlite")
