"""Copies refused at DATA without PRDR and set aside: in flight once the message is accepted only
when their delivery agent will let them in, weighed with what lands before them, in the mailbox
and in a folder with limits of its own (Reservations.landing)."""

from __future__ import annotations

from quotagate.config import parse_config
from quotagate.model import Limits, Mailbox
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from quotagate.store import open_store
from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, Site, request
from tests.policy.test_data_cap import accepted
from tests.policy.test_data_stage import ask, end_of_message, exim_data

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
LOCAL, DOMAIN = ROOMY.split("@")
ARCHIVE = f"{LOCAL}+Archive@{DOMAIN}"
STRANGER = "stranger@example.org"  # not a mailbox quotagate knows: never refused
FOLDER_QUOTA = 10_000


def folder_service(site: Site, limit: int = 1_000_000, folder_limit: int = FOLDER_QUOTA) -> PolicyService:
    """roomy with ``limit`` and its folder Archive with ``folder_limit`` of its own."""
    store = open_store(site.db_url)
    try:
        store.upsert_mailboxes([Mailbox(ROOMY, Limits(limit))])
    finally:
        store.close()
    data = site.data(client_hold="100%")
    data["folders"] = [{"match": "Archive", "quota": str(folder_limit)}]
    return site.service(parse_config(data), Metrics())


def test_a_copy_refused_for_a_folder_full_of_mail_in_flight_is_not_put_in_flight(site: Site) -> None:
    """Scenario: roomy (1,000,000 bytes) has a folder Archive with a limit of 10,000 of its own.
    A 9,500-byte message to roomy+Archive was accepted (in flight, not landed yet). Through
    Postfix, another client sends 3,000 bytes without SIZE= to roomy+Archive and to a recipient
    quotagate does not know: at END-OF-MESSAGE roomy+Archive is refused (9,500 + 3,000 do not
    fit the folder), the message accepted for the other.
    Expected: that copy is not put in flight: what lands before it (the 9,500 in flight to the
    same folder) leaves no room, its delivery agent refuses it too; held, it keeps 3,000 bytes of
    the mailbox and of the folder from every other sender for reservation_seconds."""
    service = folder_service(site)
    first = Session()
    assert ask(service, request(ARCHIVE, 9_500, instance="F", client="198.51.100.1"), first) == "DUNNO"
    assert ask(service, end_of_message(9_500, 1, instance="F", recipient=ARCHIVE), first) == "DUNNO"
    assert service.reservations.totals() == {"held": 0, "flight": 9_500}

    second = Session()
    assert ask(service, request(ARCHIVE, instance="A"), second) == "DUNNO"  # no SIZE=: nothing held
    assert ask(service, request(STRANGER, instance="A"), second) == "DUNNO"
    assert ask(service, end_of_message(3_000, 2, instance="A"), second) == "DUNNO"  # accepted for the stranger
    totals = service.reservations.totals()
    assert totals == {"held": 0, "flight": 9_500}, (
        f"{totals}: a copy the folder (9,500 of {FOLDER_QUOTA} in flight) cannot take is held in flight"
    )


def test_two_copies_refused_at_data_are_put_in_flight_only_as_far_as_they_fit_together(site: Site) -> None:
    """Scenario: roomy has 9,000 bytes free. Two other clients hold 4,000 each before DATA.
    Through Exim without PRDR, a third transaction without SIZE= names roomy+a, roomy+b and a
    recipient quotagate does not know; the message is 6,000 bytes. At DATA roomy+a is refused
    (deferred for the room held), set aside (6,000 fits alone with nothing in flight); roomy+b
    is refused as well. The message is accepted.
    Expected: at most one 6,000-byte copy in flight (two do not fit in 9,000, grace included: the
    delivery agent refuses the second); the one set aside was not counted, and 12,000 bytes went
    in flight for a mailbox with 9,000 free."""
    service = site.service(site.config(client_hold="100%"), Metrics())
    for n, instance in enumerate("BC"):
        assert ask(service, request(ROOMY, 4_000, instance=instance, client=f"198.51.100.{n + 1}")) == "DUNNO"
    for copy in (f"{LOCAL}+a@{DOMAIN}", f"{LOCAL}+b@{DOMAIN}", STRANGER):
        assert ask(service, request(copy, instance="A")) == "DUNNO"
    assert ask(service, exim_data(f"{LOCAL}+a@{DOMAIN}", 6_000)).startswith("452")
    assert ask(service, exim_data(f"{LOCAL}+b@{DOMAIN}", 6_000)).startswith("452")
    assert ask(service, accepted("A", 6_000)) == "DUNNO"
    flight = service.reservations.totals()["flight"]
    assert flight <= ROOM, f"{flight} bytes in flight for copies into a mailbox with {ROOM} bytes free"


def test_a_copy_for_a_folder_deferred_for_the_mailboxs_held_room_is_weighed_on_the_folders_usage(site: Site) -> None:
    """Scenario: roomy (limit 20,000, 1,000 used, all in INBOX) has a folder Archive with a limit
    of 5,000 of its own (empty). Two other clients hold 9,000 each for roomy before DATA.
    Through Postfix, a third client sends 4,800 bytes without SIZE= to roomy+Archive and to a
    recipient quotagate does not know. At END-OF-MESSAGE the folder rule lets it in, the
    mailbox's does not beside the 18,000 held: deferred.
    Expected: the copy lands (the folder is empty, nothing is in flight), so its 4,800 bytes are
    in flight once the message is accepted, as for a copy of the mailbox itself
    (tests/policy/test_data_stage.py). Left out, roomy ends over its limit once all land."""
    service = folder_service(site, 20_000, 5_000)
    for n, instance in enumerate("BC"):
        assert ask(service, request(ROOMY, 9_000, instance=instance, client=f"198.51.100.{n + 1}")) == "DUNNO"
    connection = Session()
    assert ask(service, request(ARCHIVE, instance="A"), connection) == "DUNNO"  # no SIZE=: nothing held
    assert ask(service, request(STRANGER, instance="A"), connection) == "DUNNO"
    assert ask(service, end_of_message(4_800, 2, instance="A"), connection) == "DUNNO"
    totals = service.reservations.totals()
    assert totals == {"held": 18_000, "flight": 4_800}, (
        f"{totals}: the copy for roomy+Archive, which lands, holds no room in flight"
    )
