"""``Recipients`` counts a recipient as one place per SLOT = 320 characters (RFC 5321's 64 of
local part, "@", 255 of domain), rounded up: one of exactly 320 characters (the longest RFC
5321 allows) takes one place, a longer one more."""

from __future__ import annotations

from quotagate.policy.reservations import Transaction
from quotagate.policy.stages import SLOT, Recipients, places


def _address(tag: str) -> str:
    local = (tag * 64)[:64]
    domain = ("d" * 63 + ".") * 3 + "e" * (255 - 64 * 3)
    address = f"{local}@{domain}"
    assert len(address) == SLOT == 320 and len(domain) == 255
    return address


def test_a_recipient_of_rfc_5321_length_takes_one_place() -> None:
    """Scenario: ``max_reservations = 2``; two transactions each let in one recipient of the
    longest length RFC 5321 allows (64 + 1 + 255 = 320 characters).

    Expected: one place each (SLOT is that length: "a longer one takes more places"): both
    transactions' recipients are remembered, and END-OF-MESSAGE of the first still finds its
    recipient."""
    recipients = Recipients(3600.0, most=2)
    first, second = Transaction("192.0.2.1", "A"), Transaction("192.0.2.2", "B")
    recipients.add(first, _address("a"), 0.0)
    recipients.add(second, _address("b"), 0.0)
    assert places(_address("a")) == 1, f"a {SLOT}-character recipient takes {places(_address('a'))} places"
    assert recipients.take(first, 1.0) is not None, "the first transaction's recipient was forgotten"
