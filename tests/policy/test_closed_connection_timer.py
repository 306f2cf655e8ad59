"""A closed Postfix policy connection ends the held room of the transaction it last asked about
CLOSED_GRACE later; when the same transaction goes on over a new policy connection (Postfix
reopened it: ``smtpd_policy_service_max_idle`` / ``max_ttl``), that end is called off: the room
it holds, at RCPT on the new connection too, stays while the message is being sent."""

from __future__ import annotations

import asyncio
import time

import pytest

from quotagate.policy import service as service_module
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import Session
from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, Site, request, run
from tests.policy.test_data_stage import ask

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
SENDER, OTHER = "203.0.113.10", "198.51.100.7"
LOCAL, DOMAIN = ROOMY.split("@")
GRACE = 0.05  # CLOSED_GRACE, shortened


def test_a_transaction_seen_again_on_a_new_connection_keeps_its_room_after_the_grace(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: through Postfix, a client's transaction (instance T) is let in at RCPT for
    roomy with SIZE=4000. Postfix then closes the idle policy connection (max_idle/max_ttl)
    while the SMTP session and transaction go on; the client's next RCPT (roomy+x, same
    transaction) is asked on a new policy connection and holds 4,000 more. The message's DATA
    then takes longer than CLOSED_GRACE (a 60 s upload is ordinary). Meanwhile another client
    declares 4,000 bytes for roomy.

    Expected: the transaction is alive on the new connection, so its 8,000 bytes stay held
    (until it ends, or that connection closes): the other client is deferred (452), room
    for only 1,000 bytes being left."""
    monkeypatch.setattr(service_module, "CLOSED_GRACE", GRACE)
    service = site.service(site.config(client_hold="100%", reservation_seconds=600), Metrics())

    async def main() -> tuple[int, str]:
        first = Session()
        assert ask(service, request(ROOMY, 4000, client=SENDER, instance="T"), first) == "DUNNO"
        first.close()  # Postfix closed the idle policy connection; the transaction goes on
        again = Session()  # the same smtpd, a new policy connection
        assert ask(service, request(f"{LOCAL}+x@{DOMAIN}", 4000, client=SENDER, instance="T"), again) == "DUNNO"
        await asyncio.sleep(GRACE * 4)  # the DATA upload goes on past the grace
        held = service.reservations.held(ROOMY, time.time(), 0).bytes
        other = ask(service, request(ROOMY, 4000, client=OTHER, instance="O"), Session())
        return held, other

    held, other = run(main())
    assert held == 8000 and other != "DUNNO", (
        f"{held} bytes held for the live transaction (8,000 expected); another client's 4,000 bytes: {other!r}"
    )
