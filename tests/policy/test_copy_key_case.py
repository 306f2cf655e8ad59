"""A copy is keyed by the local part as sent, its case kept: ``roomy+Big`` and ``roomy+big`` are
two copies (Postfix keeps the case of a local part, Dovecot files them in ``.Big`` and ``.big``)."""

from __future__ import annotations

import time

from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, Site, request
from tests.policy.test_data_stage import ask

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
MESSAGE = 5_000  # one copy fits, two do not
LOCAL, DOMAIN = ROOMY.split("@")


def _held(service: PolicyService) -> int:
    return service.reservations.held(ROOMY, time.time(), 0).bytes


def test_details_differing_in_case_are_two_copies(site: Site) -> None:
    """Attack: through Postfix (which keeps the case of local parts; with Dovecot's
    lmtp_save_to_detail_mailbox the detail is the folder, and folder names keep their case),
    one transaction names ``roomy+Big`` and ``roomy+big``, SIZE=5000 each, into a mailbox with
    9,000 bytes of room: two envelope recipients, two deliveries (into ``.Big`` and ``.big``).

    Expected: the second is deferred (two copies, 10,000 bytes, do not fit), or both copies
    are held."""
    service = site.service(site.config(client_hold="100%"), Metrics())
    connection = Session()
    assert ask(service, request(f"{LOCAL}+Big@{DOMAIN}", MESSAGE, instance="A"), connection) == "DUNNO"
    second = ask(service, request(f"{LOCAL}+big@{DOMAIN}", MESSAGE, instance="A"), connection)
    assert second != "DUNNO" or _held(service) == 2 * MESSAGE, (
        f"two copies of {MESSAGE} bytes let into {ROOM} bytes of room, {_held(service)} bytes held for them"
    )
