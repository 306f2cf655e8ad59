"""A recipient spelled with a trailing dot on its domain (``RCPT TO:<full@example.org.>``), or
routed in its local part (``full%example.org@example.org``, ``example.org!full@example.org``).

Postfix takes ``user@example.org.`` for ``user@example.org`` (trivial-rewrite strips one
trailing dot from a domain, both when it resolves the address for reject_unauth_destination
and when cleanup rewrites it), so the message is delivered to that mailbox: the check must
know that spelling, or a full mailbox takes the message at RCPT and a SIZE= that does not fit
is let in. Its resolver also rewrites ``user%domain`` to ``user@domain`` and ``site!user`` to
``user@site`` once it has stripped a domain of its own (``allow_percent_hack`` and
``swap_bangpath``, both on by default): in a ``mydestination`` domain such a recipient is
delivered to the mailbox the client spelled around.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.address import unrouted
from quotagate.config import Config, parse_config
from quotagate.model import Limits, Mailbox
from quotagate.policy.daemon import Daemon
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from quotagate.store import open_store
from tests.policy.conftest import DOMAIN, FULL, QUOTA, ROOMY, Site, request, run
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


ROUTED = {"percent hack": "{local}%{domain}@{domain}", "bang path": "{domain}!{local}@{domain}"}


@pytest.mark.parametrize("how", sorted(ROUTED))
@pytest.mark.parametrize(("mailbox", "size"), [(FULL, None), (ROOMY, 2 * QUOTA)], ids=["full", "does not fit"])
def test_a_mailbox_spelled_as_postfix_routes_it_is_checked_as_itself(
    service: PolicyService, how: str, mailbox: str, size: int | None
) -> None:
    """Attack: RCPT TO:<full%example.org@example.org> (or example.org!full@), to a mailbox over
    its quota, or with a SIZE= that does not fit, through Postfix.
    Expected: 552, as for the mailbox's own address.
    Before the fix: DUNNO ("unknown recipient"), nothing held: any number of such messages got
    past a full mailbox."""
    spelled = ROUTED[how].format(local=mailbox.split("@")[0], domain=DOMAIN)
    answer = ask(service, request(spelled, size) if size else request(spelled))
    assert answer.startswith("552"), f"{spelled} answered {answer!r}"


@pytest.mark.parametrize("how", sorted(ROUTED))
def test_a_routed_spelling_to_another_domain_is_relayed_as_written(service: PolicyService, how: str) -> None:
    """Scenario: RCPT TO:<full%example.org@elsewhere.example>, a domain that is not ours:
    Postfix rewrites only once it has stripped a domain of its own, and relays this one as
    written. Expected: DUNNO, not our full mailbox's 552 (found by the review of the first
    version, which ignored the outer domain)."""
    spelled = ROUTED[how].format(local=FULL.split("@")[0], domain=DOMAIN).replace(f"@{DOMAIN}", "@elsewhere.example")
    assert ask(service, request(spelled)) == "DUNNO"


@pytest.mark.parametrize(
    ("address", "routed"),
    [
        ("u%d.org@here.org", "u@d.org"),
        ("u%a.org%b.org@here.org", "u%a.org@b.org"),
        ("d.org!u@here.org", "u@d.org"),
        ("a.org!b.org!u@here.org", "b.org!u@a.org"),
        ('"u%d.org"@here.org', None),  # quoted: not rewritten
        ("%d.org@here.org", None),
        ("u!@here.org", None),
        ("u@here.org", None),
    ],
)
def test_unrouted_reads_the_local_part_as_postfix_does(address: str, routed: str | None) -> None:
    assert unrouted(address) == routed


ELSEWHERE = "elsewhere.example"


def test_a_reload_onto_another_store_forgets_the_old_stores_domains(site: Site, tmp_path: Path) -> None:
    """Scenario: the daemon starts on a store whose mailboxes are at elsewhere.example (a staging
    copy, another site); SIGHUP points it at the site's store (example.org only), which
    SnapshotLoader.forget() documents as "another store: load everything next time".
    RCPT TO:<full%example.org@elsewhere.example> is then relayed by Postfix as written
    (elsewhere.example is not a domain of this site). Expected: DUNNO, as for a daemon started
    on this store. HEAD: 552, the old store's domain is still "ours" (self._domains survives
    forget()). Found by the review of 337796f."""
    old_url = f"sqlite:///{tmp_path}/old.db"
    with open_store(old_url) as old:
        old.migrate()
        old.upsert_mailboxes([Mailbox(f"someone@{ELSEWHERE}", Limits(1000))])
    data = site.data()
    data["store"] = {"url": old_url}
    holder: list[Config] = [parse_config(data)]
    daemon = Daemon(lambda: holder[0])
    spelled = f"full%{DOMAIN}@{ELSEWHERE}"
    run(daemon.refresh())
    assert ELSEWHERE in daemon.service.snapshot.domains
    holder[0] = site.config()  # the site's own store
    run(daemon.reload())
    assert FULL in daemon.service.snapshot.mailboxes
    # A daemon started on this store answers DUNNO (the test of 337796f):
    fresh = Daemon(lambda: site.config())
    run(fresh.refresh())
    assert ask(fresh.service, request(spelled)) == "DUNNO"
    # The reloaded one must answer alike.
    assert ask(daemon.service, request(spelled)) == "DUNNO", sorted(daemon.service.snapshot.domains)
