"""Mail for a folder the delivery agent saves into with no quota check (under the dovecot
profiles one ``[[folders]] exclude = true`` leaves out, as Dovecot's ``Trash:ignore``; the
courier profile's Trash), where it saves ``local+folder@`` into that folder (``[policy]
detail_folders = true``), as Postfix asks: however full the mailbox, the agent saves it
(tests/agents/test_left_out_folders.py shows it for Dovecot and Courier), so the daemon has
nothing to refuse and none of the mailbox's room to hold. Without ``detail_folders`` such mail
lands in INBOX, and is checked as any; Exim's checks are never concerned.

``full@`` holds one byte more than its 10,000-byte quota, in INBOX; its ``.Trash`` is empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quotagate.config import parse_config
from quotagate.model import Action
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from quotagate.scan import run_scan
from quotagate.store import open_store
from tests.agents.test_left_out_folders import LONG, TILDE
from tests.policy.conftest import DOMAIN, REJECT, Site, make_site, request, run
from tests.policy.test_data_stage import ask, exim_data
from tests.policy.test_lowered_folders import exim_rcpt
from tests.policy.test_shared import daemon, redis  # noqa: F401 (redis: a fixture)
from tests.servers.redis import RedisProcess
from tests.spoolgen import add_message, maildir_folder

EXCLUDE_TRASH = {"match": "Trash", "exclude": True}
REFUSED = REJECT.decode().removeprefix("action=").removesuffix("\n\n")


def scanned(
    site: Site, rules: list[dict[str, Any]], trash: int | None = 0, detail_folders: bool = True, **spool: Any
) -> PolicyService:
    """full@ scanned again with ``rules`` as its [[folders]] (and ``spool`` settings: Dovecot's
    accounting unless they say), with a ``.Trash`` holding ``trash`` bytes (None: no .Trash), and
    a service over the result."""
    if trash is not None:
        folder = maildir_folder(site.spool / DOMAIN / "full" / "Maildir", "Trash")
        if trash:
            add_message(folder, trash)
    data = site.data(reservation_seconds=600, detail_folders=detail_folders)
    data["folders"] = rules
    data["spool"].update({"accounting": "dovecot", **spool})
    config = parse_config(data)
    store = open_store(site.db_url)
    try:
        run_scan(config, store)
    finally:
        store.close()
    return site.service(config, Metrics())


def held(service: PolicyService) -> int:
    return service.reservations.held(f"full@{DOMAIN}", service.clock(), 0.0).bytes


def decided(service: PolicyService, recipient: str, size: int | None, lowered: bool = False) -> Action:
    return service.check(recipient, size, lowered=lowered).decision.action


@pytest.mark.parametrize("size", [500, 50_000, None])
def test_mail_for_an_excluded_trash_of_a_full_mailbox_is_not_refused(site: Site, size: int | None) -> None:
    """Rule ``Trash`` exclude = true; full@ is over its quota; Postfix asks about
    ``full+Trash@`` with SIZE=500, 50,000 (more than the whole quota) or none.
    Expected: DUNNO (not an acceptance: nothing held for full@); ``full@`` is still refused."""
    service = scanned(site, [EXCLUDE_TRASH])
    assert ask(service, request(f"full+Trash@{DOMAIN}", size, instance="A")) == "DUNNO"
    assert decided(service, f"full+Trash@{DOMAIN}", size) is Action.DUNNO
    assert held(service) == 0
    assert ask(service, request(f"full@{DOMAIN}", 500, instance="B")) == REFUSED


@pytest.mark.parametrize(("rule", "trash"), [("Trash", 0), ("[Tt]rash", 0), ("trash", None)])
def test_exims_checks_are_not_concerned(site: Site, rule: str, trash: int | None) -> None:
    """full@ is over its quota, with a ``.Trash`` (or none). The generated Exim ACL asks about
    ``full+trash`` (Exim lowers the local part, and gives its transports the detail so, with the
    delimiter: where the mail lands is the admin's transport's doing), at RCPT and at DATA. Rule
    ``Trash``, ``[Tt]rash`` or ``trash``, exclude = true.
    Expected: refused each time, as full@ itself is, nothing held."""
    service = scanned(site, [{**EXCLUDE_TRASH, "match": rule}], trash=trash)
    answers = [ask(service, exim_rcpt("full+trash", 500)), ask(service, exim_data(f"full+trash@{DOMAIN}", 700))]
    assert answers == [REFUSED, "552 5.2.2 Mailbox is full"]
    assert decided(service, f"full+trash@{DOMAIN}", 500, lowered=True) is Action.REJECT
    assert held(service) == 0


def test_a_detail_of_another_folder_is_still_refused(site: Site) -> None:
    """Rule ``Trash`` exclude = true; full@ is over its quota. Postfix asks about
    ``full+Trashcan@`` and ``full+trash@`` (no rule matches either: they count).
    Expected: both refused as full@ itself is."""
    service = scanned(site, [EXCLUDE_TRASH])
    for local in ("full+Trashcan", "full+trash"):
        assert ask(service, request(f"{local}@{DOMAIN}", 500)) == REFUSED


def test_the_courier_profile_leaves_trash_out_by_itself(site: Site) -> None:
    """The courier accounting profile (Courier leaves Trash out of its quota), no folder rule;
    full@ is over its quota (its maildirsize says so). Postfix asks about ``full+Trash@``.
    Expected: DUNNO."""
    service = scanned(site, [], accounting="courier")
    assert decided(service, f"full+Trash@{DOMAIN}", 500) is Action.DUNNO


TRASH_OWN_LIMIT = {**EXCLUDE_TRASH, "quota": "10000"}


def test_a_left_out_folder_with_a_limit_of_its_own_is_weighed_against_that_alone(site: Site) -> None:
    """Rule ``Trash`` exclude = true, quota 10,000 bytes; full@ is over its quota, its
    ``.Trash`` holds 6,000 bytes. Postfix asks about ``full+Trash@`` with SIZE=3,000, then
    (another client) 5,500.
    Expected: 3,000 fits the folder's own limit and is accepted (the mailbox's total leaves
    Trash out), holding nothing; 5,500 does not fit (6,000 + 5,500 > 10,000 and Dovecot's 10%
    grace): refused."""
    service = scanned(site, [TRASH_OWN_LIMIT], trash=6_000)
    assert ask(service, request(f"full+Trash@{DOMAIN}", 3_000, instance="A")) == "DUNNO"
    assert decided(service, f"full+Trash@{DOMAIN}", 3_000) is Action.ACCEPT
    assert held(service) == 0
    second = request(f"full+Trash@{DOMAIN}", 5_500, instance="B", client="198.51.100.1")
    assert ask(service, second) == "552 5.2.2 Message of 5500 bytes does not fit in this mailbox"


def test_mail_for_a_left_out_folder_takes_none_of_the_mailbox_room(site: Site) -> None:
    """roomy@ (10,000 bytes, 1,000 used); rule Trash exclude = true with a limit of its own
    (10,000). One client asks about roomy+Trash@ with SIZE=8,500, then another about roomy@
    with SIZE=1,000; then the first client again about full+Trash@ (full@ is over its quota)
    twice, 600 bytes each time, in two transactions.
    Expected: DUNNO every time: Trash mail holds none of roomy's room, and is not held to the
    client's share of a mailbox (1,000 bytes) whose total it never reaches."""
    service = scanned(site, [TRASH_OWN_LIMIT])
    client = "203.0.113.5"
    trash = ask(service, request(f"roomy+Trash@{DOMAIN}", 8_500, instance="A", client=client))
    inbox = ask(service, request(f"roomy@{DOMAIN}", 1_000, instance="B", client="198.51.100.1"))
    again = [ask(service, request(f"full+Trash@{DOMAIN}", 600, instance=i, client=client)) for i in ("C", "D")]
    assert [trash, inbox, *again] == ["DUNNO"] * 4


def test_the_shared_ledger_weighs_mail_for_a_left_out_folder_as_a_daemon_alone_does(
    tmp_path: Path,
    redis: RedisProcess,  # noqa: F811 (a fixture)
) -> None:
    """full@ is over its quota; rule Trash exclude = true with a limit of its own (10,000; .Trash
    empty). Postfix asks about full+Trash@ with SIZE=500, once of a daemon deciding alone and once
    of a daemon with [shared] url (a private Redis).
    Expected: DUNNO both ways: the ledger weighs mailboxes, and Trash mail is weighed against the
    folder's own limit alone."""
    site = make_site(tmp_path)
    trash = f"full+Trash@{DOMAIN}"

    async def go(url: str | None) -> bytes:
        dovecot = {"accounting": "dovecot"}
        async with daemon(site, url, "mx1", folders=[TRASH_OWN_LIMIT], spool=dovecot, detail_folders=True) as d:
            return await d.ask(request(trash, 500, client="203.0.113.5", instance=f"t-{url is None}"))

    assert [run(go(None)), run(go(redis.url))] == [b"action=DUNNO\n\n"] * 2


def test_where_details_are_not_folders_the_mail_lands_in_inbox_and_is_checked(site: Site) -> None:
    """Rule ``Trash`` exclude = true, but ``detail_folders`` is off (the default: Dovecot's LMTP
    saves ``full+Trash@`` into INBOX unless lmtp_save_to_detail_mailbox = yes); full@ is over its
    quota. Postfix asks about ``full+Trash@``, under the dovecot and the courier profiles.
    Expected: refused each time, as full@ itself is (adding +Trash gets no mail past a full
    mailbox)."""
    service = scanned(site, [EXCLUDE_TRASH], detail_folders=False, accounting="dovecot")
    assert ask(service, request(f"full+Trash@{DOMAIN}", 500)) == REFUSED
    courier = scanned(site, [], detail_folders=False, accounting="courier")
    assert ask(courier, request(f"full+Trash@{DOMAIN}", 500)) == REFUSED


@pytest.mark.parametrize(
    ("accounting", "rule", "detail"),
    [
        ("courier", "Spam", "Spam"),  # deliverquota checks every folder but Trash
        ("files", "Trash", "Trash"),  # an agent not known to save such mail unchecked
        ("exim", "Trash", "Trash"),
        ("dovecot", "Gelöscht", "Gel&APY-scht"),  # Dovecot saves it into "Gel&APY-scht" as named
    ],
)
def test_only_folders_the_agent_saves_into_unchecked_are_let_in(
    site: Site, accounting: str, rule: str, detail: str
) -> None:
    """full@ is over its quota; detail_folders = true; a rule excluding ``rule``. Postfix asks
    about ``full+<detail>@`` under the ``accounting`` profile: Courier's deliverquota leaves only
    Trash out of its check; the files and exim profiles are no agent known to skip the check;
    Dovecot takes a detail as a UTF-8 name, so ``Gel&APY-scht`` is not ``Gelöscht``.
    Expected: refused, as full@ itself is."""
    service = scanned(site, [{**EXCLUDE_TRASH, "match": rule}], accounting=accounting)
    assert ask(service, request(f"full+{detail}@{DOMAIN}", 500)) == REFUSED


TRASH_AND_BELOW = {"match": "Trash*", "exclude": True}  # Trash and its children (Dovecot: Trash*:ignore)
ONLY_INBOX: list[dict[str, Any]] = [{"match": "INBOX"}, {"match": "*", "exclude": True}]  # only INBOX counts


@pytest.mark.parametrize("detail", ["Trash/x", "Trash.", "Trash..x"])
def test_a_detail_that_is_no_valid_folder_name_is_not_let_past_a_full_mailbox(site: Site, detail: str) -> None:
    """Rule ``Trash*`` exclude = true (Dovecot: quota_rule2 = Trash*:ignore), dovecot profile,
    detail_folders = true; full@ is over its quota. Postfix asks about ``full+<detail>@`` with
    SIZE=500, where the detail is no mailbox name Dovecot takes under Maildir++ ('/' in it, a
    trailing or doubled separator): Dovecot fails to open it and saves into INBOX, whose quota
    refuses it.
    Expected: refused, as full@ itself is (tests/agents/test_left_out_folders.py shows Dovecot)."""
    service = scanned(site, [TRASH_AND_BELOW])
    assert ask(service, request(f"full@{DOMAIN}", 500, instance="A")) == REFUSED
    assert ask(service, request(f"full+{detail}@{DOMAIN}", 500, instance="B")) == REFUSED
    assert held(service) == 0


@pytest.mark.parametrize("detail", ["inbox", "Inbox", ""])
def test_inbox_under_another_spelling_or_an_empty_detail_is_not_a_left_out_folder(site: Site, detail: str) -> None:
    """Rules ``INBOX`` (counted), then ``*`` exclude = true: only INBOX counts (Dovecot:
    quota_rule2 = INBOX:storage=+0, quota_rule3 = ?*:ignore); dovecot profile, detail_folders
    = true; full@ is over its quota. Postfix asks about ``full+inbox@``, ``full+Inbox@`` and
    ``full+@``: Dovecot takes INBOX case-insensitively, and an empty detail as INBOX, so each
    lands in the one counted folder and is refused by Dovecot.
    Expected: refused, as full@ itself is."""
    service = scanned(site, ONLY_INBOX)
    assert ask(service, request(f"full@{DOMAIN}", 500, instance="A")) == REFUSED
    assert ask(service, request(f"full+{detail}@{DOMAIN}", 500, instance="B")) == REFUSED


@pytest.mark.parametrize("detail", TILDE)
def test_a_detail_starting_with_a_tilde_is_not_let_past_a_full_mailbox(site: Site, detail: str) -> None:
    """As Postfix asks (protocol_name): rules INBOX then * exclude = true, dovecot profile,
    detail_folders = true, full@ over its quota; full+~x@ with SIZE=500.
    Expected: refused (Dovecot saves it into INBOX)."""
    service = scanned(site, ONLY_INBOX)
    assert ask(service, request(f"full@{DOMAIN}", 500, instance="A")) == REFUSED
    assert ask(service, request(f"full+{detail}@{DOMAIN}", 500, instance="B")) == REFUSED
    assert held(service) == 0


@pytest.mark.parametrize("detail", LONG.values(), ids=LONG.keys())
def test_a_detail_too_long_for_a_directory_is_not_let_past_a_full_mailbox(site: Site, detail: str) -> None:
    """As Postfix asks: rule Trash* exclude = true, dovecot profile, detail_folders = true,
    full@ over its quota; full+Trash<long>@ with SIZE=500.
    Expected: refused (Dovecot saves it into INBOX)."""
    service = scanned(site, [TRASH_AND_BELOW])
    assert ask(service, request(f"full+{detail}@{DOMAIN}", 500, instance="B")) == REFUSED
