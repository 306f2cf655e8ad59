"""Reservations bound to SMTP transactions, through the real service over a real store:
released at once without data, kept in flight until the delivery is seen, bounded per client."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.decide import Reserved
from quotagate.policy.codec import PolicyDecoder, PolicyRequest
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, Serve, Site, request

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
PROBER, OTHER = "203.0.113.66", "198.51.100.7"


def ask(service: PolicyService, data: bytes, session: Session | None = None) -> str:
    (item,) = PolicyDecoder().feed(data)
    assert isinstance(item, PolicyRequest)
    return service.answer(item, session)


def end(instance: str, client: str = "192.0.2.1") -> bytes:
    return f"request=quotagate_end\ninstance={instance}\nclient_address={client}\n\n".encode()


def held(service: PolicyService) -> int:
    return service.reservations.held(ROOMY, time.time(), 0).bytes


@pytest.fixture
def service(site: Site) -> PolicyService:
    return site.service(site.config(client_hold="100%"), Metrics())


def test_the_same_transaction_asking_again_holds_once(service: PolicyService) -> None:
    assert ask(service, request(ROOMY, 4000, instance="A")) == "DUNNO"
    assert ask(service, request(ROOMY, 4000, instance="A")) == "DUNNO"  # an alias, or a retry
    assert held(service) == 4000


def test_two_recipients_of_one_mailbox_in_one_transaction_must_fit_together(service: PolicyService) -> None:
    """``user+a`` and ``user+b`` resolve to one mailbox but may be delivered as two copies: the
    second is weighed with the room the first holds (deferred here), never let in on its own
    (too little room held for two copies)."""
    local, domain = ROOMY.split("@")
    assert ask(service, request(f"{local}+a@{domain}", 6000, instance="A")) == "DUNNO"
    assert ask(service, request(f"{local}+b@{domain}", 6000, instance="A")).startswith("452")
    assert held(service) == 6000


def test_a_transaction_that_ends_without_data_lets_its_room_go(service: PolicyService) -> None:
    ask(service, request(ROOMY, 4000, instance="A"))
    ask(service, request(ROOMY, 4000, instance="B"))
    assert ask(service, request(ROOMY, 4000, instance="C")).startswith("452")  # held room: for now
    ask(service, end("A"))  # Exim: the next MAIL, or QUIT
    assert held(service) == 4000
    assert ask(service, request(ROOMY, 4000, instance="C")) == "DUNNO"


def test_a_new_postfix_instance_on_the_connection_ends_the_one_before(service: PolicyService) -> None:
    connection = Session()
    ask(service, request(ROOMY, 4000, instance="1"), connection)
    ask(service, request(ROOMY, 3000, instance="2"), connection)  # the first sent no data
    assert held(service) == 3000
    ask(service, request(ROOMY, 0, "END-OF-MESSAGE", instance="2"), connection)
    ask(service, request(ROOMY, 1000, instance="3"), connection)  # the second's mail is in flight
    assert held(service) == 4000


def test_mail_in_flight_survives_fresher_readings_until_its_delivery_is_seen(
    site: Site, service: PolicyService
) -> None:
    ask(service, request(ROOMY, 4000, instance="A"))
    ask(service, request(ROOMY, 4000, "END-OF-MESSAGE", instance="A"))
    fresh = site.service(site.config(client_hold="100%"), Metrics())  # a refresh, or a scan
    service.snapshot = fresh.snapshot
    assert held(service) == 4000
    service.delivered(ROOMY)  # a watch event, or Exim's delivery hint
    assert service.reservations.held(ROOMY, time.time(), time.time() - 60).bytes == 4000
    assert service.reservations.held(ROOMY, time.time(), time.time() + 1).bytes == 0


def hint(size: int) -> bytes:
    """Exim's delivery hint (its transport's event_action), with the message's size."""
    return f"request=quotagate_delivery\nrecipient={ROOMY}\nsize={size}\nmessage_linecount=3\n\n".encode()


def test_a_delivery_hint_releases_only_a_message_the_delivery_could_be(service: PolicyService) -> None:
    """Scenario: a 4,000-byte message is in flight when Exim delivers a 300-byte one the daemon
    never let in (submitted on its command line) and its hint says so, with that size.
    Expected: a reading after it still holds the 4,000 bytes; the message's own hint frees them."""
    ask(service, request(ROOMY, 4000, instance="A"))
    ask(service, request(ROOMY, 4000, "END-OF-MESSAGE", instance="A"))
    assert ask(service, hint(300)) == "DUNNO"
    assert service.reservations.held(ROOMY, time.time(), time.time() + 1).bytes == 4000
    ask(service, hint(4000))
    assert service.reservations.held(ROOMY, time.time(), time.time() + 2).bytes == 0


def test_a_delivery_told_by_the_hint_and_by_the_watch_releases_one_message(service: PolicyService) -> None:
    """Scenario: messages of 4,000 and 3,900 bytes in flight; one lands, and both Exim's hint
    (4,000) and the watch (S=4180: the transport's headers counted) tell of it.
    Expected: one message's room released, the other's kept. The watch's word was taken for
    another delivery and released the 3,900 bytes of a message still on its way."""
    for instance, size in (("A", 4000), ("B", 3900)):
        ask(service, request(ROOMY, size, instance=instance))
        ask(service, request(ROOMY, size, "END-OF-MESSAGE", instance=instance))
    ask(service, hint(4000))
    service.delivered(ROOMY, 4180)  # the tracker's call
    assert service.reservations.held(ROOMY, time.time(), time.time() + 1) == Reserved(3900, 1)


def test_a_prober_halving_size_holds_one_message_and_nothing_once_it_quits(site: Site) -> None:
    service = site.service(site.config(), Metrics())  # client_hold = 10% of 10,000 bytes
    size, answers = 2**40, []
    while size >= 1:
        answers.append(ask(service, request(ROOMY, size, client=PROBER, instance=f"p{size}")))
        size //= 2
    # One message (the largest that fitted, 8,192 bytes), more than client_hold: "never less
    # than one message of the size it declared". Everything after it was deferred, not held.
    assert len(service.reservations) == 1 and held(service) == 8192
    # 4,096 .. 1 are deferred, not refused: its own held room, or its share, stands in the way.
    assert answers.count("DUNNO") == 1 and sum(a.startswith("452") for a in answers) == 13
    assert ask(service, request(ROOMY, ROOM - 8192, client=OTHER, instance="o")) == "DUNNO"
    ask(service, end("o", OTHER))
    size = 2**40
    while size >= 1:
        ask(service, end(f"p{size}", PROBER))
        size //= 2
    assert held(service) == 0
    assert ask(service, request(ROOMY, ROOM, client=OTHER, instance="o2")) == "DUNNO"


def test_reservations_survive_a_restart_and_show_in_the_cli(serve: object, tmp_path: Path) -> None:
    running: Serve = serve(client_hold="100%")  # type: ignore[operator]
    # Each transaction's smtpd keeps its policy connection (its closing would end the
    # transaction), across the restart too.
    smtpd = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    smtpd.sendall(request(ROOMY, 4000, instance="A", client=OTHER))
    assert smtpd.recv(4096) == b"action=DUNNO\n\n"
    other = socket.create_connection(("127.0.0.1", running.port), timeout=5)
    other.sendall(request(ROOMY, 4000, instance="B", client=PROBER))
    assert other.recv(4096) == b"action=DUNNO\n\n"
    other.sendall(request(ROOMY, 4000, "END-OF-MESSAGE", instance="B", client=PROBER))
    assert other.recv(4096) == b"action=DUNNO\n\n"
    assert running.ask(request(ROOMY, 4000, instance="C")).startswith(b"action=452")
    running.daemon.stop()
    running.daemon.start()  # between the RCPTs and the DATA of a burst
    assert running.ask(request(ROOMY, 4000, instance="C")).startswith(b"action=452")
    assert "2 reservations restored" in running.log()

    config = ["--config", str(running.config)]
    # check decides as the daemon would: with the room it holds (4,000 held + 4,000 in flight).
    assert main([*config, "check", ROOMY, "--size", "4000"]) == 1
    assert main([*config, "reservations", ROOMY]) == 0
    assert main([*config, "reservations", "--release", ROOMY]) == 0
    assert running.ask(request(ROOMY, 4000, instance="C")) == b"action=DUNNO\n\n"
    smtpd.close()
    other.close()
