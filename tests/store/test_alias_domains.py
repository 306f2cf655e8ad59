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

from tests.mta.conftest import DOMAIN, QUOTA, make_site
from tests.servers import schemas
from tests.servers.postgres import Postgres

pytestmark = [pytest.mark.servers]


def test_a_full_mailbox_is_refused_through_its_alias_domain(tmp_path: Path, postgres: Postgres) -> None:
    work = tmp_path
    url = postgres.create_database(f"qg_{uuid.uuid4().hex[:12]}")
    schemas.create(url, "postfixadmin")
    schemas.add_alias_domains(url, {"alias.example": DOMAIN})
    site = make_site(work, f'[store]\nurl = "{url}"\nschema = "postfixadmin"')
    assert site.quotagate("db", "migrate") == 0
    schemas.add_mailbox(url, "postfixadmin", f"full@{DOMAIN}", QUOTA, maildir=f"{DOMAIN}/full/Maildir")
    site.fill("full", QUOTA + 1)
    assert site.quotagate("scan") == 0
    assert site.quotagate("check", f"full@{DOMAIN}") == 1  # the mailbox itself: refused
    assert site.quotagate("check", "full@alias.example") == 1  # same mailbox via its alias domain
