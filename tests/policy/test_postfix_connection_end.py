"""Postfix's end of a transaction without data. When an SMTP client does RCPT (with SIZE=)
and QUIT, its smtpd process asks nothing more; once that process exits (max_idle, max_use) its
policy connection closes, and that ends the transaction it last asked about: its held room goes
(kept, a client that quits after RCPT would keep its room from every other client for
reservation_seconds). And the recipients remembered for END-OF-MESSAGE stay bounded in bytes.
"""

from __future__ import annotations

import asyncio

import pytest

from quotagate.policy.metrics import Metrics
from quotagate.policy.reservations import Transaction
from quotagate.policy.service import Session
from quotagate.policy.stages import LetIn, Recipients
from tests.policy.conftest import DUNNO, QUOTA, ROOMY, ROOMY_USED, Site, connected, request, run, serving, wait_until
from tests.policy.test_data_stage import ask

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
PROBER, OTHER = "203.0.113.66", "198.51.100.7"


def test_the_room_of_a_postfix_transaction_goes_when_its_policy_connection_closes(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: through Postfix, MAIL, RCPT TO:<roomy> SIZE=9000 (all the room: one message may
    exceed client_hold), then QUIT; the smtpd process then exits and its policy connection
    closes. Expected: the transaction is over (no further request can name it), so its held
    room is let go CLOSED_GRACE later (Postfix may also close a connection and open another
    in the middle of a transaction), and another client's 9,000-byte message is let in."""
    monkeypatch.setattr("quotagate.policy.service.CLOSED_GRACE", 0.5)
    config = site.config(reservation_seconds=600)
    metrics = Metrics()
    service = site.service(config, metrics)

    async def main() -> list[bytes]:
        service.files.begin()
        await service.files.ready()
        async with serving(config, service.respond, metrics) as running:
            async with connected(running.host_port) as smtpd:  # one smtpd process's policy connection
                assert await smtpd.ask(request(ROOMY, ROOM, client=PROBER, instance="1.a.b.0")) == DUNNO
            # smtpd exited: the policy connection is closed
            await wait_until(lambda: not running.server.connections, timeout=5)
            answers = []
            async with connected(running.host_port) as other:
                answers.append(await other.ask(request(ROOMY, ROOM, client=OTHER, instance="2.a.b.0")))
            await asyncio.sleep(0.7)
            async with connected(running.host_port) as other:
                answers.append(await other.ask(request(ROOMY, ROOM, client=OTHER, instance="2.a.b.1")))
            return answers

    try:
        answers = run(main())
    finally:
        service.files.close()
    assert [a[:10] for a in answers] == [b"action=452", DUNNO[:10]], answers


def test_recipients_longer_than_an_address_may_be_take_more_room_in_memory() -> None:
    """Attack: through Postfix, without SIZE= (nothing held), MAIL and many RCPT TO of 2 kB each
    (``roomy+<detail>``, each let in and remembered for END-OF-MESSAGE), transaction after
    transaction. Expected: each takes a place among the ``most`` remembered per 320 characters
    (RFC 5321's 64 + 1 + 255), so memory stays bounded in bytes, not only in recipients; a
    long recipient is still remembered (not remembered, its message would not be weighed at
    END-OF-MESSAGE)."""
    recipients = Recipients(3600, most=100)
    local, domain = ROOMY.split("@")
    for t in range(300):
        for n in range(50):
            recipients.add(Transaction(PROBER, str(t)), f"{local}+{n:04d}{'x' * 2000}@{domain}", 0.0)
    assert recipients.remembered <= 100
    assert len(recipients) <= 100
    long = f"{local}+{'x' * 330}@{domain}"
    recipients.add(Transaction(PROBER, "ok"), ROOMY, 0.0)
    recipients.add(Transaction(PROBER, "ok"), long, 0.0)
    assert recipients.take(Transaction(PROBER, "ok"), 0.0) == LetIn((ROOMY, long), 2)


def test_a_flood_of_closed_postfix_connections_keeps_nothing_but_the_room_they_held(site: Site) -> None:
    """Attack: hundreds of Postfix policy connections, each one RCPT then closed (no timer, no
    entry for a transaction that holds nothing), and as many holding room: at most
    max_reservations of them wait for their grace; the oldest go first."""
    service = site.service(site.config(max_reservations=100, client_hold="100%"), Metrics())
    for n in range(300):
        session = Session()
        ask(service, request(ROOMY, None, client=f"198.51.100.{n % 250}", instance=f"none-{n}"), session)
        session.close()
    assert not service._closing
    for n in range(200):
        session = Session()
        ask(service, request(ROOMY, 1, client=f"203.0.113.{n % 250}", instance=f"held-{n}"), session)
        session.close()
    assert len(service._closing) <= 100
