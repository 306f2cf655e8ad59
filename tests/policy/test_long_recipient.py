"""Recipients longer than 320 characters are remembered for Postfix's END-OF-MESSAGE (taking
more room in memory): Postfix (and Exim) accept local parts longer than RFC 5321's 64, and a
detail routes to the mailbox whatever its length. Not remembered, one such recipient switched
the END-OF-MESSAGE check off for every recipient of the message."""

from __future__ import annotations

import time

from quotagate.policy.metrics import Metrics
from quotagate.policy.service import Session
from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, Site, request
from tests.policy.test_data_stage import ask, end_of_message

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
LOCAL, DOMAIN = ROOMY.split("@")


def test_one_long_recipient_does_not_switch_off_the_end_of_message_check(site: Site) -> None:
    """Attack: through Postfix, without SIZE= (nothing to weigh at RCPT), MAIL, RCPT
    TO:<roomy> and RCPT TO:<roomy+xxx...@example.org> (a 330-character address, a detail of
    roomy: the same mailbox), then a 20,000-byte message; roomy has 9,000 bytes of room.
    Expected: END-OF-MESSAGE refuses the message (neither copy fits), as it does with a short
    second detail. Now DUNNO: the long recipient was not remembered, so no recipient is
    weighed and the message (two copies, 40,000 bytes) is let in."""
    service = site.service(site.config(client_hold="100%"), Metrics())
    long_detail = f"{LOCAL}+{'x' * (330 - len(ROOMY) - 1)}@{DOMAIN}"
    assert len(long_detail) > 320
    connection = Session()
    assert ask(service, request(ROOMY, instance="A"), connection) == "DUNNO"
    assert ask(service, request(long_detail, instance="A"), connection) == "DUNNO"
    answer = ask(service, end_of_message(20_000, 2, instance="A"), connection)
    held = service.reservations.held(ROOMY, time.time(), 0).bytes
    assert answer != "DUNNO", f"a 20,000-byte message for two copies in roomy let in ({held} bytes held)"


def test_the_same_with_a_short_detail_is_refused(site: Site) -> None:
    """Control: the same transaction with ``roomy+x`` is refused at END-OF-MESSAGE (passes)."""
    service = site.service(site.config(client_hold="100%"), Metrics())
    connection = Session()
    assert ask(service, request(ROOMY, instance="A"), connection) == "DUNNO"
    assert ask(service, request(f"{LOCAL}+x@{DOMAIN}", instance="A"), connection) == "DUNNO"
    assert ask(service, end_of_message(20_000, 2, instance="A"), connection) != "DUNNO"
