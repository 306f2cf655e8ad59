"""A Postfix policy connection that closes ends the transaction it last asked about, but its
held room stays CLOSED_GRACE longer: Postfix may close a policy connection while its smtpd
process lives and the SMTP transaction goes on (``smtpd_policy_service_max_idle``: a client's
DATA taking longer than 300 s; ``smtpd_policy_service_max_ttl``), and the next request opens a
new one. The room held at RCPT is then still held: the message is on its way."""

from __future__ import annotations

import asyncio
import time

from quotagate.policy.metrics import Metrics
from tests.policy.conftest import DUNNO, QUOTA, ROOMY, ROOMY_USED, Site, connected, request, run, serving, wait_until
from tests.policy.test_data_stage import end_of_message

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
SENDER, OTHER = "203.0.113.10", "198.51.100.7"


def test_a_policy_connection_closed_by_max_idle_mid_data_keeps_the_transactions_room(site: Site) -> None:
    """Scenario (no attack needed; an attacker can also time it): through Postfix, a client
    declares SIZE=9000 for roomy (all its room) and is let in at RCPT; its DATA then takes
    longer than smtpd_policy_service_max_idle, so Postfix closes the idle policy connection
    (the smtpd process, and the transaction, go on). Meanwhile another client declares 9,000
    bytes for roomy. Then the first message's END-OF-MESSAGE comes on a new connection.

    Expected: the other client is deferred (the room is held for a message on its way) and
    the first message is accepted at END-OF-MESSAGE. Now the close let the room go: the other
    client is let in, and the first sender, let in at RCPT, is refused after its upload (or
    both are let in, for room for one)."""
    config = site.config(reservation_seconds=600)
    metrics = Metrics()
    service = site.service(config, metrics)

    async def main() -> tuple[bytes, bytes]:
        service.files.begin()
        await service.files.ready()
        async with serving(config, service.respond, metrics) as running:
            async with connected(running.host_port) as smtpd:
                assert await smtpd.ask(request(ROOMY, ROOM, client=SENDER, instance="1.a.b.0")) == DUNNO
            # max_idle: Postfix closed the policy connection; DATA still comes in
            await wait_until(lambda: not running.server.connections, timeout=5)
            await asyncio.sleep(0.2)
            async with connected(running.host_port) as other:  # another smtpd, mid-transaction too
                other_answer = await other.ask(request(ROOMY, ROOM, client=OTHER, instance="2.a.b.0"))
                async with connected(running.host_port) as smtpd_again:  # the same smtpd, a new connection
                    eom = end_of_message(ROOM, 1, instance="1.a.b.0").replace(b"192.0.2.1", SENDER.encode())
                    first_answer = await smtpd_again.ask(eom)
            return other_answer, first_answer

    try:
        other_answer, first_answer = run(main())
    finally:
        service.files.close()
    held = service.reservations.held(ROOMY, time.time(), 0).bytes
    assert other_answer != DUNNO and first_answer == DUNNO, (
        f"other client: {other_answer!r}; the first message at END-OF-MESSAGE: {first_answer!r}"
        f" ({held} bytes held now, room {ROOM})"
    )
