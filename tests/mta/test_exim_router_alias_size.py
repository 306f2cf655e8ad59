"""Exim's router variant asks at RCPT about the mailbox an alias resolves to, and holds the size
the client declared there; the check at DATA asks about $recipients as the client wrote them
(the alias, no mailbox of quotagate's: DUNNO). The message accepted, the real size goes in flight
in place of the declared one for every mailbox the transaction holds room in: a client declaring
SIZE= of its whole share and sending a few hundred bytes left its share in flight per message
(room in flight is no client's to count, and with no delivery seen it stayed for
reservation_seconds)."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from quotagate.policy.control import ask as ask_control
from tests.mta.conftest import DOMAIN, Site
from tests.mta.test_exim_policy import ALIAS_ROUTER, site_for
from tests.servers.daemon import PolicyDaemon, policy_daemon
from tests.servers.exim import Exim

pytestmark = [pytest.mark.mta, pytest.mark.servers]

ROOMY, ALIAS = f"roomy@{DOMAIN}", f"alias@{DOMAIN}"
SHARE = 1_000  # client_hold: 10% of 10,000
BODY = b"Subject: small\r\n\r\nhello\r\n"


@pytest.fixture
def routed(work: Path, exim: Exim) -> Iterator[tuple[Site, PolicyDaemon]]:
    site, port = site_for(work)
    with site.config.open("a") as config:
        config.write(f'control_socket = "{work}/control.sock"\n')
    site.full_and_roomy()
    parts = exim_config.parts(load_config(site.config), "policy")
    (work / "aliases").write_text(f"{ALIAS}: {ROOMY}\n")
    routers = ALIAS_ROUTER.format(aliases=work / "aliases") + parts.routers
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{u}" for u in ("full", "roomy")}
    exim.configure(users=users, main=parts.main, acls=parts.acls, routers=routers)
    with policy_daemon(site.config, port) as daemon:
        exim.start()
        yield site, daemon


def test_exim_router_alias_holds_the_real_size_in_flight_not_the_declared_one(
    routed: tuple[Site, PolicyDaemon], exim: Exim
) -> None:
    site, _ = routed
    for _ in range(3):
        with smtplib.SMTP("127.0.0.1", exim.port, timeout=60) as client:
            client.ehlo("client.test")
            assert client.mail("sender@example.net", [f"SIZE={SHARE}"])[0] == 250
            assert client.rcpt(ALIAS)[0] == 250
            assert client.data(BODY)[0] == 250
    held = ask_control(site.work / "control.sock", {"op": "list", "address": ROOMY})["reservations"]
    landed = sorted((site.maildir("roomy") / "new").iterdir())
    real = sum(f.stat().st_size for f in landed)
    assert held, "nothing held at all: the router variant did not hold at RCPT"
    assert sum(r["bytes"] for r in held) <= real, (
        f"{sum(r['bytes'] for r in held)} bytes held for {len(landed)} messages of {real} bytes: {held}"
    )
