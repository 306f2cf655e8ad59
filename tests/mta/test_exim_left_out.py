"""Mail for a folder left out of the quota through real Exim (Debian's exim4-daemon-heavy), with
``[policy] detail_folders = true``: Exim's checks are not concerned, since where Exim's mail lands
is its transport's doing, and Exim gives its transports the detail lowered, with the delimiter."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN
from tests.mta.test_exim_classic import _detail_site, refused_full
from tests.servers.exim import Exim
from tests.spoolgen import maildir_folder

pytestmark = [pytest.mark.servers, pytest.mark.mta]


# Details are folders, and Trash is left out of the total (as Dovecot's Trash:ignore).
TRASH_LEFT_OUT = 'detail_folders = true\n[[folders]]\nmatch = "Trash"\nexclude = true\n'


def test_exim_hands_the_agent_the_detail_lowered_so_plus_trash_is_not_trash(work: Path, exim: Exim) -> None:
    """full@ is over its quota and has a .Trash; rule Trash exclude = true (case-sensitive, as
    Dovecot's Trash:ignore); detail_folders = true. Exim runs the generated ACL lookup at RCPT
    and, on delivery, a suffix router whose transport is given $local_part_suffix (as
    "dovecot-lda -m $local_part_suffix" is). Mail for full+Trash@ is asked about at RCPT, then
    delivered by local submission.
    Expected: the transport is given "+trash" (Exim lowers the local part for its routers, and
    the transport sees what the router saw; $local_part_suffix keeps the delimiter): dovecot-lda
    would save into "+trash", not Trash, a folder that counts. So full+Trash@ is refused as full
    at RCPT by Exim, and by the daemon asked as Exim asks."""
    (work / "mail" / DOMAIN / "full").mkdir(parents=True)
    maildir_folder(work / "mail" / DOMAIN / "full" / "Maildir", "Trash")
    site = _detail_site(work, exim, ["full"], {"full"}, "+", "lsearch", "acl", TRASH_LEFT_OUT)
    parts = exim_config.parts(load_config(site.config), "acl", "lsearch")
    exim.configure(
        users={f"full@{DOMAIN}": f"{DOMAIN}/full"},
        main=parts.main,
        acl=parts.acl,
        acls=parts.acls,
        # A router taking the detail off (local_part_suffix = +*) and a transport given it, as
        # "dovecot-lda -m $local_part_suffix" is: it writes it into a header here.
        routers=exim.folder_router("+*"),
        transports=exim.folder_transport(".delivered", "headers_add = X-Detail: $local_part_suffix\n"),
    )
    (rcpt,) = exim.fake_session(f"full+Trash@{DOMAIN}")
    exim.submit("sender@example.net", f"full+Trash@{DOMAIN}", message=b"Subject: t\n\nhello\n")
    (saved,) = (work / "mail" / DOMAIN / "full" / "Maildir" / ".delivered" / "new").iterdir()
    given = next(line for line in saved.read_text().splitlines() if line.startswith("X-Detail:"))
    assert given == "X-Detail: +trash"  # what dovecot-lda -m would be given: the lowered detail
    assert site.quotagate("check", f"full+trash@{DOMAIN}", "--size", "100") == 1  # that folder counts
    as_exim_asks = site.quotagate("check", f"full+trash@{DOMAIN}", "--size", "100", "--stage", "data")
    assert [refused_full(rcpt), as_exim_asks] == [True, 1], exim.last_session
