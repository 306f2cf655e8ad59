"""Numbered SMTP transactions against the sample site's roomy mailbox, for the tests of several
daemons (workers, MX hosts) sharing room: each from a client of its own, so that one client's
share of a mailbox (client_hold) never decides."""

from __future__ import annotations

from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, request

MESSAGE = 2_000  # room for 4: ROOMY_USED + 4 * MESSAGE <= QUOTA < ROOMY_USED + 5 * MESSAGE
FITS = (QUOTA - ROOMY_USED) // MESSAGE


def rcpt(n: int, size: int = MESSAGE) -> bytes:
    """Transaction ``n``'s RCPT check, from client 192.0.2.(n+1)."""
    return request(ROOMY, size, client=f"192.0.2.{n + 1}", instance=f"tx{n}")


def end(n: int) -> bytes:
    """Transaction ``n`` ends without data (what the generated Exim ACLs send)."""
    return request(ROOMY, None, client=f"192.0.2.{n + 1}", instance=f"tx{n}").replace(
        b"request=smtpd_access_policy", b"request=quotagate_end"
    )
