"""Exim's check at DATA without PRDR, given recipients whose local part is quoted in part
(RFC 5322's ``word *("." word)``): Exim accepts ``"john".doe@`` at RCPT, and its ``$local_part``
there is ``john.doe``, the mailbox the router delivers to. Unquoting only a local part quoted
whole, quotagate_data_check once asked the daemon about ``"john".doe@`` (or ``john"."doe@``), a
mailbox it does not know: DUNNO, and a message that does not fit its only recipient got in."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, QUOTA, Site
from tests.mta.test_exim_policy import site_for
from tests.mta.test_exim_prdr import NEARLY_FULL, NO_FIT, TRANSPORT_QUOTA, data_reply, delivered
from tests.servers.daemon import PolicyDaemon, policy_daemon
from tests.servers.exim import Exim

pytestmark = [pytest.mark.mta, pytest.mark.servers]  # a real MTA, as tests/mta's

DOTTED = "john.doe"  # a full mailbox whose name has a dot, as many have


@pytest.fixture
def dotted(work: Path, exim: Exim) -> Iterator[tuple[Site, PolicyDaemon]]:
    """The receiving Exim of tests/mta/test_exim_prdr.py, with a nearly full john.doe@ too."""
    site, port = site_for(work)
    site.full_and_roomy(NEARLY_FULL)
    assert site.quotagate("mailbox", "add", f"{DOTTED}@{DOMAIN}", "--quota", str(QUOTA)) == 0
    site.fill(DOTTED, NEARLY_FULL)
    assert site.quotagate("scan") == 0
    parts = exim_config.parts(load_config(site.config), "policy")
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{u}" for u in ("full", "roomy", DOTTED)}
    exim.configure(users=users, main=parts.main, acls=parts.acls, verified_acl=parts.acl, transport=TRANSPORT_QUOTA)
    with policy_daemon(site.config, port) as daemon:
        exim.start()
        yield site, daemon


def test_the_plain_dotted_address_is_refused_at_data(dotted: tuple[Site, PolicyDaemon], exim: Exim) -> None:
    """The control: the same message to john.doe@ as written is refused at DATA (passes now)."""
    codes, code, text = data_reply(exim, f"{DOTTED}@{DOMAIN}")
    assert codes == [250] and code == 552 and re.fullmatch(rf"5\.2\.2 {NO_FIT}", text), exim.log("main")


@pytest.mark.parametrize("written", ['"john".doe', 'john."doe"', '"john"."doe"'])
def test_exim_a_local_part_quoted_in_part_does_not_escape_the_data_check(
    dotted: tuple[Site, PolicyDaemon], exim: Exim, written: str
) -> None:
    site, daemon = dotted
    codes, code, text = data_reply(exim, f"{written}@{DOMAIN}")
    assert codes == [250]  # Exim takes it: $local_part is john.doe, delivered to john.doe's Maildir
    log = exim.log("main")
    assert code == 552 and re.fullmatch(rf"5\.2\.2 {NO_FIT}", text), f"{code} {text}\n{log}\n{daemon.log()}"
    assert delivered(site, DOTTED) == []
