"""PostfixAdmin's alias domains (table ``alias_domain``: ``alias_domain`` -> ``target_domain``,
``active``), which PostfixAdmin's own Postfix maps (virtual_alias_domains with
``mysql_virtual_alias_domain_mailbox_maps.cf``) and Dovecot follow: mail for
``full@alias.example`` is delivered into ``full@example.org``'s mailbox.

Postfix asks the policy daemon at RCPT with the recipient as the client sent it (virtual alias
rewriting happens later, in cleanup): the ``postfixadmin`` preset read ``mailbox`` only, so for
``full@alias.example`` the daemon found no mailbox and answered DUNNO, and mail for a full mailbox
came in through every alias domain. ``quotagate check`` gives the daemon's decision.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.mta.conftest import DOMAIN, QUOTA, make_site
from tests.servers import schemas
from tests.servers.postgres import Postgres

pytestmark = [pytest.mark.servers]

ALIAS_DOMAIN = """CREATE TABLE alias_domain (
    alias_domain varchar(255) NOT NULL PRIMARY KEY, target_domain varchar(255) NOT NULL,
    created timestamp with time zone DEFAULT now(), modified timestamp with time zone DEFAULT now(),
    active boolean NOT NULL DEFAULT true
)"""


def test_a_full_mailbox_is_refused_through_its_alias_domain(tmp_path: Path, postgres: Postgres) -> None:
    work = tmp_path
    url = postgres.create_database(f"qg_{uuid.uuid4().hex[:12]}")
    schemas.create(url, "postfixadmin")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(ALIAS_DOMAIN)
        conn.execute(
            text("INSERT INTO alias_domain (alias_domain, target_domain) VALUES ('alias.example', :d)"), {"d": DOMAIN}
        )
    engine.dispose()
    site = make_site(work, f'[store]\nurl = "{url}"\nschema = "postfixadmin"')
    assert site.quotagate("db", "migrate") == 0
    schemas.add_mailbox(url, "postfixadmin", f"full@{DOMAIN}", QUOTA, maildir=f"{DOMAIN}/full/Maildir")
    site.fill("full", QUOTA + 1)
    assert site.quotagate("scan") == 0
    assert site.quotagate("check", f"full@{DOMAIN}") == 1  # the mailbox itself: refused
    assert site.quotagate("check", "full@alias.example") == 1  # same mailbox via its alias domain
