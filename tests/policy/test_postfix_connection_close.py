"""A Postfix policy connection that closes ends the transaction it last asked about, but its
held room stays CLOSED_GRACE longer: Postfix may close a policy connection while its smtpd
process lives and the SMTP transaction goes on (``smtpd_policy_service_max_idle``: a client's
DATA taking longer than 300 s; ``smtpd_policy_service_max_ttl``), and the next request opens a
new one. The room held at RCPT is then still held: the message is on its way."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from quotagate.policy.codec import PolicyDecoder, PolicyRequest
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import CLOSED_GRACE, PolicyService, Session
from tests.policy.conftest import (
    DUNNO,
    QUOTA,
    ROOMY,
    ROOMY_USED,
    Serve,
    Site,
    connected,
    request,
    restarted,
    run,
    serving,
    wait_until,
)
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


def ask(service: PolicyService, data: bytes, session: Session) -> str:
    (item,) = PolicyDecoder().feed(data)
    assert isinstance(item, PolicyRequest)
    return service.answer(item, session)


def test_room_of_a_postfix_transaction_abandoned_before_a_restart_goes_like_any_other(
    serve: Callable[..., Serve], site: Site
) -> None:
    """Scenario: through Postfix (its requests carry protocol_name), a prober's RCPT holds 9,000
    bytes of roomy's 9,000 free, then it QUITs; Postfix tells the policy service nothing. The
    admin restarts quotagate (SIGTERM: the held room is saved; the daemon closes the smtpd's
    policy connection itself, so it is not taken as the smtpd exiting). The smtpd process
    then asks about its next client on a new connection, and every other smtpd asks about
    roomy for the next minutes. The restored reservation is tied to no connection any more: no
    new instance on its connection and no connection closing can end it (it stayed for the whole
    reservation_seconds, 600 s, deferring every other client).
    Expected: as without a restart (README: "until that smtpd process asks about its next
    client, or a minute after it exits"), the room goes at the latest CLOSED_GRACE (60 s) after
    the daemon came back: another client asking 61 s later gets DUNNO."""
    state_file = site.base / "reservations.json"  # where restarted() reads it
    running = serve(site, state_file=str(state_file))
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as smtpd:
        smtpd.sendall(request(ROOMY, 9000, instance="P1", client=SENDER))
        assert smtpd.recv(4096) == b"action=DUNNO\n\n"  # one message: more than client_hold, allowed
        running.daemon.stop()  # SIGTERM, with the smtpd's connection still open
    assert "P1" in state_file.read_text()

    service = restarted(site, [])  # the next `quotagate serve`, restoring that file
    later = time.time() + CLOSED_GRACE + 1
    service.clock = lambda: later
    smtpd_again = Session()  # the same smtpd process, on a new connection: its next client
    assert ask(service, request(ROOMY, 9000, instance="P2", client=OTHER), smtpd_again) == "DUNNO", (
        "the prober's abandoned 9,000 bytes are still held a minute after the restart"
    )
