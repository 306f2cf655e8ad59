"""Each recipient of one mailbox in one transaction that the MTA delivers apart is a copy held
apart, keyed (transaction, mailbox, copy) with copy the local part as sent ("" for the
mailbox's own). Two recipients the MTA delivers as two copies (``roomy`` and ``roomy+``,
``roomy+x`` and ``roomy-x`` with two delimiters) never share a key: the second would replace
the first's hold."""

from __future__ import annotations

import time

import pytest

from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, Site, request
from tests.policy.test_data_stage import ask

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes
MESSAGE = 5_000  # one copy fits, two do not
LOCAL, DOMAIN = ROOMY.split("@")


def _held(service: PolicyService) -> int:
    return service.reservations.held(ROOMY, time.time(), 0).bytes


@pytest.mark.parametrize(
    "second", [f"{LOCAL}+@{DOMAIN}", f"{LOCAL.upper()}@{DOMAIN}"], ids=["empty-detail", "capitals"]
)
def test_the_plain_address_and_another_spelling_of_it_are_two_copies(site: Site, second: str) -> None:
    """Attack: one transaction, RCPT TO:<roomy@example.org> SIZE=5000, then the same mailbox
    spelled otherwise (SIZE=5000): ``roomy+@`` (an empty detail: Exim's ``local_part_suffix =
    +*`` and Postfix's recipient_delimiter route it to roomy) or ``ROOMY@`` (Postfix keeps the
    case), a distinct envelope recipient each, so a second copy is delivered, into 9,000 bytes
    of room. Expected: the second is deferred (two copies, 10,000 bytes, do not fit), or both
    copies are held: never the second asked as the first again."""
    service = site.service(site.config(client_hold="100%"), Metrics())
    connection = Session()
    assert ask(service, request(ROOMY, MESSAGE, instance="A"), connection) == "DUNNO"
    answer = ask(service, request(second, MESSAGE, instance="A"), connection)
    assert answer != "DUNNO" or _held(service) == 2 * MESSAGE, (
        f"two copies of {MESSAGE} bytes let into {ROOM} bytes of room, {_held(service)} bytes held for them"
    )


def test_one_detail_behind_two_delimiters_is_two_copies(site: Site) -> None:
    """Attack: with ``folder_delimiter = "+-"`` (Postfix's and Dovecot's recipient_delimiter
    may hold several), one transaction names roomy+x and roomy-x, SIZE=5000 each: two envelope
    recipients, two deliveries into the same mailbox (folder x). Both take the copy key "x", so
    the second replaces the first's hold and two copies get into room for one.
    Expected: the second is deferred (or both copies are held)."""
    service = site.service(site.config(client_hold="100%", folder_delimiter="+-"), Metrics())
    connection = Session()
    assert ask(service, request(f"{LOCAL}+x@{DOMAIN}", MESSAGE, instance="A"), connection) == "DUNNO"
    second = ask(service, request(f"{LOCAL}-x@{DOMAIN}", MESSAGE, instance="A"), connection)
    assert second != "DUNNO" or _held(service) == 2 * MESSAGE, (
        f"two copies of {MESSAGE} bytes let into {ROOM} bytes of room, {_held(service)} bytes held for them"
    )


def _exim_rcpt(recipient: str, size: int, spelling: str) -> bytes:
    """What the generated Exim ACL sends at RCPT: $local_part (lowered, unquoted) and the local
    part as the client wrote it."""
    return (
        f"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient={recipient}\nspelling={spelling}\n"
        f"size={size}\ninstance=A\nclient_address=192.0.2.1\n\n"
    ).encode()


@pytest.mark.parametrize("spelling", ["Roomy", '"roomy"', '"room\\y"'])
def test_an_exim_spelling_of_the_address_is_a_copy_of_its_own(site: Site, spelling: str) -> None:
    """Attack: through Exim, one transaction sends RCPT TO:<roomy@> and then another spelling of
    it (``Roomy@``, ``"roomy"@``), SIZE=5000 each: Exim asks about ``roomy`` both times
    ($local_part) and delivers both. Expected: the second, known by its spelling, is a copy of
    its own: deferred (two copies do not fit) or held beside the first, never in its place."""
    service = site.service(site.config(client_hold="100%"), Metrics())
    assert ask(service, _exim_rcpt(ROOMY, MESSAGE, LOCAL)) == "DUNNO"
    answer = ask(service, _exim_rcpt(ROOMY, MESSAGE, spelling))
    assert answer != "DUNNO" or _held(service) == 2 * MESSAGE


def test_an_alias_of_the_mailbox_asked_by_exims_router_is_the_mailbox_itself(site: Site) -> None:
    """The router variant asks about the mailbox an alias leads to (``roomy``), with the
    spelling of the RCPT (``Alias``), in a transaction that already holds roomy@ itself. Exim
    delivers the alias's child and roomy@ once. Expected: the alias replaces roomy's hold (a
    spelling that is not the address asked about names no copy)."""
    service = site.service(site.config(client_hold="100%"), Metrics())
    assert ask(service, _exim_rcpt(ROOMY, MESSAGE, LOCAL)) == "DUNNO"
    assert ask(service, _exim_rcpt(ROOMY, MESSAGE, "Alias")) == "DUNNO"
    assert _held(service) == MESSAGE
