"""A client at its share (client_hold) when Exim asks at DATA: the recipient is deferred (PRDR: it
gets no copy), and what the transaction held for it at RCPT is let go. Kept, it went in flight
with the message accepted for the other recipients (room in flight is no client's to count):
round after round, one client filled a mailbox with room held for mail that never came."""

from __future__ import annotations

import time

import pytest

from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from tests.policy.conftest import ROOMY, Site, request
from tests.policy.test_data_stage import ask, end_of_message, exim_data

CLIENT = "192.0.2.1"


def end(instance: str) -> bytes:
    """What Exim's quotagate_end sends (next MAIL, QUIT)."""
    return f"request=quotagate_end\ninstance={instance}\nclient_address={CLIENT}\n\n".encode()


def accepted(instance: str, size: int) -> bytes:
    """The last statement of Exim's quotagate_data: the message was accepted."""
    return (
        f"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nsize={size}\n"
        f"size_added=0\nmessage_linecount=0\ninstance={instance}\nclient_address={CLIENT}\n\n"
    ).encode()


@pytest.fixture
def service(site: Site) -> PolicyService:
    return site.service(site.config(), Metrics())  # client_hold: 10%, 1,000 bytes of roomy's 10,000


def test_a_recipient_deferred_at_data_for_the_clients_share_leaves_no_room_held_once_it_is_gone(
    service: PolicyService,
) -> None:
    rounds = 6
    for n in range(rounds):
        # A second connection of the same client holds 400 bytes of roomy at RCPT.
        assert ask(service, request(ROOMY, 400, instance=f"other{n}")) == "DUNNO"
        # This transaction declares 500 (900 held by the client: within its 1,000).
        assert ask(service, request(ROOMY, 500, instance=f"tx{n}")) == "DUNNO"
        # PRDR at DATA: the real size is 700; 400 + 700 passes the client's share: deferred.
        assert ask(service, exim_data(ROOMY, 700, instance=f"tx{n}", prdr=True)).startswith("452")
        # The message was accepted for its other recipients (PRDR): Exim says so, then the
        # client ends both transactions.
        ask(service, accepted(f"tx{n}", 700))
        ask(service, end(f"other{n}"))
    # roomy got no message from this client, whose transactions have all ended.
    held = service.reservations.held(ROOMY, time.time(), 0)
    assert held.bytes == 0, f"{held.bytes} bytes held for roomy ({held.messages} messages) after the client left"


STRANGER = "stranger@example.org"  # a recipient quotagate does not know: DUNNO, never refused


def in_flight(service: PolicyService) -> int:
    return service.reservations.totals()["flight"]


def test_exim_without_prdr_a_recipient_deferred_for_the_share_still_gets_the_message_and_its_room(
    service: PolicyService,
) -> None:
    # Another connection of the same client holds 400 bytes of roomy at RCPT.
    assert ask(service, request(ROOMY, 400, instance="other")) == "DUNNO"
    # This transaction: roomy (500 declared, 900 held by the client) and a stranger.
    assert ask(service, request(ROOMY, 500, instance="tx")) == "DUNNO"
    assert ask(service, request(STRANGER, 500, instance="tx")) == "DUNNO"
    # quotagate_data_check (no PRDR): 400 + 700 passes the client's share: roomy deferred ...
    assert ask(service, exim_data(ROOMY, 700, instance="tx")).startswith("452")
    assert ask(service, exim_data(STRANGER, 700, instance="tx")) == "DUNNO"
    # ... but not every recipient was refused: Exim accepts the message, for roomy too.
    ask(service, accepted("tx", 700))
    ask(service, end("other"))
    # 700 bytes are on their way to roomy: that room must be held until they land.
    assert in_flight(service) >= 700, (
        f"{in_flight(service)} bytes in flight for a 700-byte message Exim accepted for roomy"
    )


def test_postfix_a_recipient_deferred_for_the_share_in_an_accepted_message_keeps_its_room(
    service: PolicyService,
) -> None:
    other, connection = Session(), Session()
    assert ask(service, request(ROOMY, 400, instance="other"), other) == "DUNNO"
    assert ask(service, request(ROOMY, 500, instance="tx"), connection) == "DUNNO"
    assert ask(service, request(STRANGER, 500, instance="tx"), connection) == "DUNNO"
    # END-OF-MESSAGE, two recipients, 700 bytes: roomy is over the client's share, the stranger
    # is not refused, so the message is accepted (one reply for all): roomy gets its copy.
    assert ask(service, end_of_message(700, 2, instance="tx"), connection) == "DUNNO"
    ask(service, end("other"))
    held = service.reservations.held(ROOMY, time.time(), 0)
    assert held.bytes >= 700, f"{held.bytes} bytes held for roomy, which Postfix accepted a 700-byte message for"


def test_exim_a_copy_deferred_at_data_without_prdr_holds_its_room_once_the_message_is_accepted(
    service: PolicyService,
) -> None:
    """Scenario: two clients hold 4,000 bytes each for roomy (8,000 of its 9,000 free). A third,
    without SIZE= and without PRDR, sends 3,000 bytes to roomy and to a recipient quotagate does
    not know. At DATA roomy is deferred (it fits alone, not beside the room held), the other
    recipient is not refused: Exim accepts the message, and roomy gets its copy.
    Expected: that copy's 3,000 bytes are in flight once the message is accepted: the two
    holders' 8,000 no longer both fit. Its room was let go at DATA, and roomy ended 2,000 bytes
    over its limit once all three landed."""
    for n, instance in enumerate("BC"):
        holder = request(ROOMY, 4000, instance=instance, client=f"198.51.100.{n + 1}")
        assert ask(service, holder) == "DUNNO"
    assert ask(service, request(ROOMY, instance="A")) == "DUNNO"  # no SIZE=: nothing held
    assert ask(service, exim_data(ROOMY, 3000)).startswith("452")
    assert service.reservations.totals() == {"held": 8000, "flight": 0}
    assert ask(service, accepted("A", 3000)) == "DUNNO"
    assert service.reservations.totals() == {"held": 8000, "flight": 3000}


def test_exim_a_copy_refused_at_data_goes_with_a_refused_message(service: PolicyService) -> None:
    """Scenario: as above, but the message has roomy as its only recipient: Exim refuses it (452)
    and the client's next MAIL ends the transaction without data.
    Expected: nothing stays in flight or held for it."""
    for n, instance in enumerate("BC"):
        assert ask(service, request(ROOMY, 4000, instance=instance, client=f"198.51.100.{n + 1}")) == "DUNNO"
    assert ask(service, exim_data(ROOMY, 3000)).startswith("452")
    assert ask(service, end("A")) == "DUNNO"
    assert ask(service, accepted("A2", 3000)) == "DUNNO"  # another message of its
    assert service.reservations.totals() == {"held": 8000, "flight": 0}


def test_a_second_copy_over_the_clients_share_at_data_still_holds_its_room_in_flight(
    service: PolicyService,
) -> None:
    """Scenario: one client, without SIZE=, sends one 700-byte message to roomy+a and roomy+b
    (two copies of roomy: Postfix's recipient_delimiter, or Exim's Roomy@ beside roomy@). The
    client may hold 1,000 bytes of roomy: at END-OF-MESSAGE the first copy holds 700, the second
    would pass the share and is deferred, but the message has one answer for both, is accepted,
    and both copies land.
    Expected: 1,400 bytes in flight. (Before, the deferred copy held nothing: another client
    was then let in beside one copy, not two, and roomy went over its limit; with Exim's
    transport quota that message sat in the queue and bounced late.)"""
    local, domain = ROOMY.split("@")
    copies = [f"{local}+a@{domain}", f"{local}+b@{domain}"]
    connection = Session()
    for copy in copies:
        assert ask(service, request(copy, instance="tx"), connection) == "DUNNO"
    assert ask(service, end_of_message(700, 2, instance="tx"), connection) == "DUNNO"
    assert service.reservations.totals() == {"held": 0, "flight": 1400}


def test_exim_a_second_copy_over_the_clients_share_at_data_still_holds_its_room_in_flight(
    service: PolicyService,
) -> None:
    """As above through Exim's DATA ACL without PRDR: each copy asked, the second deferred, the
    message accepted for both."""
    local, domain = ROOMY.split("@")
    answers = [ask(service, exim_data(f"{local}+{tag}@{domain}", 700, instance="tx")) for tag in "ab"]
    assert answers[0] == "DUNNO" and answers[1].startswith("452")
    assert ask(service, accepted("tx", 700)) == "DUNNO"
    assert service.reservations.totals() == {"held": 0, "flight": 1400}
