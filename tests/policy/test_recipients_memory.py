"""The recipients Postfix's checks let in are remembered per open transaction, up to 1,000 a
transaction and up to max_reservations in all. Bounded by transactions only, it was
max_reservations x 1,000 strings (a billion with the defaults): RCPTs without SIZE= hold no room,
so nothing stood in the way of one client that opens transactions (a new ``instance`` on a
connection of its own) and never ends them."""

from __future__ import annotations

from quotagate.policy.metrics import Metrics
from quotagate.policy.service import Session
from tests.policy.conftest import ROOMY, Site, request
from tests.policy.test_data_stage import ask

MAX_RESERVATIONS = 100


def test_one_client_cannot_make_the_daemon_remember_more_recipients_than_max_reservations(site: Site) -> None:
    service = site.service(site.config(max_reservations=MAX_RESERVATIONS), Metrics())
    local, _, domain = ROOMY.partition("@")
    for t in range(20):
        connection = Session()  # a policy connection of its own, as each smtpd process has
        for n in range(1000):
            # roomy+N: one mailbox, a thousand recipients; no SIZE=: no room held
            assert ask(service, request(f"{local}+{n}@{domain}", instance=f"t{t}"), connection) == "DUNNO"
    remembered = sum(len(entry[1]) for entry in service.recipients._seen.values())
    assert len(service.reservations) == 0
    assert remembered <= MAX_RESERVATIONS, (
        f"{remembered} recipients remembered for {len(service.recipients)} open transactions of one client"
    )
