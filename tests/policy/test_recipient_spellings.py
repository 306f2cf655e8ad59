"""A recipient spelled with a trailing dot on its domain (``RCPT TO:<full@example.org.>``).

Postfix takes ``user@example.org.`` for ``user@example.org`` (trivial-rewrite strips one
trailing dot from a domain, both when it resolves the address for reject_unauth_destination
and when cleanup rewrites it), so the message is delivered to that mailbox: the check must
know that spelling, or a full mailbox takes the message at RCPT and a SIZE= that does not fit
is let in.
"""

from __future__ import annotations

import pytest

from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from tests.policy.conftest import FULL, QUOTA, ROOMY, Site, request
from tests.policy.test_data_stage import ask


@pytest.fixture
def service(site: Site) -> PolicyService:
    return site.service(site.config(), Metrics())


def test_a_full_mailbox_with_a_trailing_dot_on_its_domain_is_still_refused(service: PolicyService) -> None:
    """Attack: RCPT TO:<full@example.org.> to a mailbox over its quota, through Postfix.
    Expected: 552 5.2.2 Mailbox is full, as for <full@example.org>."""
    assert ask(service, request(FULL)).startswith("552")
    answer = ask(service, request(FULL + "."))
    assert answer.startswith("552"), f"{FULL}. answered {answer!r}"


def test_a_message_too_big_for_a_mailbox_with_a_trailing_dot_on_its_domain_is_still_refused(
    service: PolicyService,
) -> None:
    """Attack: RCPT TO:<roomy@example.org.> SIZE=20000 for a mailbox of 10,000 bytes.
    Expected: 552 (does not fit), as without the dot."""
    assert ask(service, request(ROOMY, 2 * QUOTA)).startswith("552")
    answer = ask(service, request(ROOMY + ".", 2 * QUOTA))
    assert answer.startswith("552"), f"{ROOMY}. answered {answer!r}"
